"""Open the event stream a deployment is configured for: Redis Streams on the control store (the
default) or AWS Kinesis. Sensors, the controller and tests call `open_event_stream` instead of
constructing a backend, so switching backends is a setting. Not for: creating the Kinesis stream
(await `KinesisEventStream.ensure_stream()` once, where provisioning is allowed).
"""

from __future__ import annotations

from typing import Any

from detection.streams import EventStream, RedisEventStream

BACKENDS = ("redis", "kinesis")


def open_event_stream(
    backend: str,
    control_url: str,
    *,
    kinesis_stream: str | None = None,
    kinesis_region: str | None = None,
    kinesis_endpoint: str | None = None,
    reclaim_ms: int | None = None,
    max_event_ahead: float | None = None,
    **options: Any,
) -> EventStream:
    """An event stream on `backend` ("redis" or "kinesis") whose group state, checkpoints and dead
    letters live in the Redis control store at `control_url`.

    `reclaim_ms`: how long an event taken and not acknowledged stays with its consumer before
    another one gets it (Redis: `reclaim_idle_ms`; Kinesis: the shard lease, `lease_ms`).
    `max_event_ahead`: seconds an entry may be dated ahead of the time the stream took it (by
    the stream's clock) before it is dead-lettered (default `detection.events.MAX_EVENT_AHEAD`).
    `kinesis_*` are ignored for Redis. Other `options` go to the backend's constructor
    (e.g. `group`, `stream` for Redis, `poll_interval_ms` for Kinesis).
    """
    name = backend.strip().lower()
    if max_event_ahead is not None:
        options["max_event_ahead"] = max_event_ahead
    if name == "redis":
        if reclaim_ms is not None:
            options["reclaim_idle_ms"] = reclaim_ms
        return RedisEventStream.from_url(control_url, **options)
    if name == "kinesis":
        from detection.kinesis import DEFAULT_REGION, DEFAULT_STREAM_NAME, KinesisEventStream

        if reclaim_ms is not None:
            options["lease_ms"] = reclaim_ms
        return KinesisEventStream.from_url(
            control_url,
            stream_name=kinesis_stream or DEFAULT_STREAM_NAME,
            region_name=kinesis_region or DEFAULT_REGION,
            endpoint_url=kinesis_endpoint or None,
            **options,
        )
    raise ValueError(f"unknown event stream backend {backend!r}: expected one of {BACKENDS}")
