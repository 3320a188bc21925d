"""The event stream's two backends against real servers: Redis Streams on a real redis-server,
and Kinesis through boto3 against moto's standalone server over HTTP (its group state, leases,
checkpoints and dead letters on a real redis-server). Shared behaviour is parametrized over both
backends and opened through `open_event_stream`, the way sensors and controllers open it.

One moto server serves the whole module (each test uses its own Kinesis stream); each test gets
its own redis-server. Reclaim intervals are short so the file stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.redis_processes import RedisProcess
from detection import events as events_module
from detection.events import Event, new_event
from detection.kinesis import KinesisEventStream, parse_receipt
from detection.stream_factory import open_event_stream
from detection.streams import DeadLetters, Received
from lazarus_lite.background import EventHandler, consume_events
from lazarus_lite.errors import DecisionPending, EventIdReused
from ratequeue.local_cluster import start_node
from tests.moto_server import MotoServer

RECLAIM_MS = 1200  # Redis: reclaim_idle_ms; Kinesis: shard lease
POLL_MS = 20
REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server over HTTP, with dummy credentials in the environment for boto3."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
            env.delenv(name, raising=False)
        with MotoServer() as moto:
            yield moto.url


@pytest.fixture
def control(tmp_path: Path) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path)
    try:
        yield node
    finally:
        node.stop()


class Streams:
    """Opens consumers (each with its own connections) on one event stream; closes them all."""

    def __init__(self, backend: str, control_url: str, kinesis_endpoint: str | None) -> None:
        self.backend = backend
        self.control_url = control_url
        self.kinesis_endpoint = kinesis_endpoint
        self.kinesis_stream = f"events-{uuid.uuid4().hex[:10]}"
        self.opened: list[Any] = []

    def open(self) -> Any:
        options: dict[str, Any] = {}
        if self.backend == "kinesis":
            options = {
                "kinesis_stream": self.kinesis_stream,
                "kinesis_region": REGION,
                "kinesis_endpoint": self.kinesis_endpoint,
                "poll_interval_ms": POLL_MS,
            }
        stream = open_event_stream(self.backend, self.control_url, reclaim_ms=RECLAIM_MS, **options)
        self.opened.append(stream)
        return stream

    async def dead_letters(self) -> list[dict[str, Any]]:
        control = aioredis.Redis.from_url(self.control_url)
        try:
            return await DeadLetters(control).list()
        finally:
            await control.aclose()

    async def close(self) -> None:
        for stream in self.opened:
            with contextlib.suppress(Exception):
                await stream.close()


@pytest.fixture(params=["redis", "kinesis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    endpoint = request.getfixturevalue("moto_url") if request.param == "kinesis" else None
    return request.param, endpoint


async def open_streams(
    backend: str, control: RedisProcess, endpoint: str | None, shard_count: int = 1
) -> Streams:
    streams = Streams(backend, control.url, endpoint)
    if backend == "kinesis":
        await streams.open().ensure_stream(shard_count)
    return streams


@pytest.fixture
async def streams(backend: tuple[str, str | None], control: RedisProcess) -> AsyncIterator[Streams]:
    opened = await open_streams(backend[0], control, backend[1])
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def kinesis(moto_url: str, control: RedisProcess) -> AsyncIterator[Streams]:
    opened = await open_streams("kinesis", control, moto_url)
    try:
        yield opened
    finally:
        await opened.close()


def sample_event(incident: str | None = None) -> Event:
    return new_event(
        "RedisMasterDown", environment="dev", region="local", service="ratequeue", shard="s0",
        host="127.0.0.2:7001", source="sensor-s0-replica1", incident_key=incident,
        data={"master_link_status": "down"},
    )  # fmt: skip


async def receive_n(stream: Any, consumer: str, n: int, timeout: float = 5.0) -> list[Received]:
    """Receive until `n` events arrived (or `timeout`); returns what arrived."""
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await stream.receive(consumer, count=n - len(got), block_ms=100)
    return got


async def test_published_event_is_received_once_as_published(streams: Streams) -> None:
    stream, other = streams.open(), streams.open()
    event = sample_event()
    await stream.publish(event)

    got = await receive_n(stream, "c1", 1)

    assert [r.event for r in got] == [event]
    assert await stream.receive("c1", block_ms=50) == []
    assert await other.receive("c2", block_ms=50) == []  # well within the reclaim interval


MISSING_HOST = {k: v for k, v in json.loads(sample_event().to_json()).items() if k != "host"}
UNKNOWN_TYPE = {**json.loads(sample_event().to_json()), "type": "RedisOnFire"}
NOT_A_NUMBER = {**json.loads(sample_event().to_json()), "data": {"lag": float("nan")}}
DATED_AHEAD = {**json.loads(sample_event().to_json()), "occurred_at": "9999-12-31T23:59:59-23:59"}
# What plain `json.loads` raises on rather than refuses: an integer Python will not convert, and
# nesting past the decoder's recursion limit.
LONG_INTEGER_ID = '{"id": ' + "9" * 5000 + "}"
DEEP_NESTING = "[" * 10_000


@pytest.mark.parametrize(
    ("payload", "reason_names"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(MISSING_HOST), "'host'"),
        (json.dumps(UNKNOWN_TYPE), "'type'"),
        (LONG_INTEGER_ID, "field 'id': an integer of 5000 digits"),
        (DEEP_NESTING, "nested deeper than"),
        (json.dumps(NOT_A_NUMBER), "NaN is not a JSON value"),
        (json.dumps(DATED_AHEAD), "field 'occurred_at'"),
    ],
    ids=["bad-json", "missing-field", "unknown-type", "long-integer", "deep-nesting",
         "not-a-number", "dated-ahead"],
)  # fmt: skip
async def test_malformed_entry_is_dead_lettered_and_consumer_moves_on(
    streams: Streams, payload: str, reason_names: str
) -> None:
    stream = streams.open()
    position = await stream.publish_raw(payload)
    valid = sample_event()
    await stream.publish(valid)

    got = await receive_n(stream, "c1", 1)

    assert [r.event for r in got] == [valid]
    [dead] = await streams.dead_letters()
    assert reason_names in dead["reason"]
    assert (dead["raw"], dead["backend"], dead["position"]) == (payload, streams.backend, position)


async def the_stores_clock(streams: Streams) -> datetime:
    """The Redis server's clock, which dates a Redis stream entry (moto's, which dates a Kinesis
    record, is this host's too)."""
    control = aioredis.Redis.from_url(streams.control_url)
    try:
        seconds, micros = await control.time()
    finally:
        await control.aclose()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


def set_this_nodes_clock_off(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's clock `seconds` off, as the event parser reads it (`time.time`, or
    `datetime.now` as it once did: a test the old code passed could not fail)."""
    true_time = time.time
    monkeypatch.setattr(time, "time", lambda: true_time() + seconds)

    class ClockOff(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> ClockOff:
            return cls.fromtimestamp(true_time() + seconds, tz)

    monkeypatch.setattr(events_module, "datetime", ClockOff)


async def test_an_event_dated_at_its_arrival_is_delivered_to_a_receiver_whose_clock_is_behind(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # By this node's clock the event is 30 s ahead; the stream took it as it happened.
    stream = streams.open()
    event = sample_event().model_copy(update={"occurred_at": await the_stores_clock(streams)})
    await stream.publish(event)
    set_this_nodes_clock_off(monkeypatch, -30)

    got = await receive_n(stream, "c1", 1)

    assert [r.event for r in got] == [event]
    assert await streams.dead_letters() == []


async def test_an_event_dated_ahead_of_its_arrival_is_dead_lettered_by_a_receiver_as_far_ahead(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dated 30 s ahead of when the stream took it; to a receiver whose clock is 30 s ahead too
    # it looks fresh, yet it would look younger than it is to everyone else.
    stream = streams.open()
    ahead = (await the_stores_clock(streams)) + timedelta(seconds=30)
    position = await stream.publish(sample_event().model_copy(update={"occurred_at": ahead}))
    valid = sample_event()
    await stream.publish(valid)
    set_this_nodes_clock_off(monkeypatch, 30)

    got = await receive_n(stream, "c1", 1)

    assert [r.event for r in got] == [valid]
    [dead] = await streams.dead_letters()
    assert dead["position"] == position
    assert "field 'occurred_at'" in dead["reason"]
    assert "ahead of its arrival in the stream" in dead["reason"]


@pytest.mark.parametrize("unparsable", [LONG_INTEGER_ID, "[" * 100_000],
                         ids=["long-integer", "deep-nesting"])  # fmt: skip
async def test_the_valid_events_taken_with_an_unparsable_entry_are_handed_out(
    streams: Streams, unparsable: str
) -> None:
    stream = streams.open()
    before, after = sample_event("incident-1"), sample_event("incident-2")
    await stream.publish(before)
    await stream.publish_raw(unparsable)
    await stream.publish(after)

    got = await receive_n(stream, "c1", 2)  # one batch: all three are taken at once

    assert [r.event for r in got] == [before, after]
    assert len(await streams.dead_letters()) == 1


async def test_an_event_its_consumer_refuses_is_dead_lettered_and_not_handed_out_again(
    streams: Streams,
) -> None:
    stream = streams.open()
    event = sample_event()
    await stream.publish(event)
    [taken] = await receive_n(stream, "c1", 1)

    await stream.refuse(taken, "its id is another event's")

    [dead] = await streams.dead_letters()
    assert (dead["reason"], dead["position"]) == ("its id is another event's", taken.receipt)
    assert json.loads(dead["raw"])["id"] == event.id
    await asyncio.sleep(RECLAIM_MS / 1000 + 0.1)  # past the reclaim of an unacknowledged one
    assert await streams.open().receive("c2", block_ms=RECLAIM_MS) == []


async def test_unacked_event_is_redelivered_to_another_consumer_after_reclaim(
    streams: Streams,
) -> None:
    dying, survivor = streams.open(), streams.open()
    event = sample_event()
    await dying.publish(event)
    assert [r.event for r in await receive_n(dying, "dying", 1)] == [event]  # and never acked
    assert await survivor.receive("survivor", block_ms=50) == []

    await asyncio.sleep(RECLAIM_MS / 1000 + 0.1)
    got = await receive_n(survivor, "survivor", 1)

    assert [r.event for r in got] == [event]


async def test_acked_event_is_not_delivered_again_even_to_a_new_consumer(
    streams: Streams,
) -> None:
    first = streams.open()
    handled, later = sample_event("incident-1"), sample_event("incident-2")
    await first.publish(handled)
    [taken] = await receive_n(first, "first", 1)
    await first.ack(taken)
    await asyncio.sleep(RECLAIM_MS / 1000 + 0.1)  # `first` went silent: its claim has lapsed

    newcomer = streams.open()
    assert await newcomer.receive("newcomer", block_ms=RECLAIM_MS) == []
    await newcomer.publish(later)
    assert [r.event for r in await receive_n(newcomer, "newcomer", 1)] == [later]


async def test_kinesis_restart_resumes_from_the_checkpoint(kinesis: Streams) -> None:
    before = kinesis.open()
    acked, unacked = sample_event("incident-1"), sample_event("incident-2")
    await before.publish(acked)
    await before.publish(unacked)
    first, second = await receive_n(before, "node-1", 2)
    await before.ack(first)
    await before.close()  # a clean stop gives the shard lease up

    after = kinesis.open()
    got = await receive_n(after, "node-1", 1)

    assert [r.event for r in got] == [unacked]
    assert got[0].receipt == second.receipt


async def test_kinesis_out_of_order_ack_never_skips_an_unacked_record(kinesis: Streams) -> None:
    stream = kinesis.open()
    events = [sample_event(f"incident-{i}") for i in range(3)]
    for event in events:
        await stream.publish(event)
    first, second, third = await receive_n(stream, "node-1", 3)
    shard_id = parse_receipt(first.receipt)[0]

    await stream.ack(third)
    await stream.ack(second)
    assert await stream.checkpoints() == {}
    await stream.ack(first)

    assert await stream.checkpoints() == {shard_id: parse_receipt(third.receipt)[1]}


async def test_kinesis_reads_every_shard_and_one_consumer_holds_each(
    moto_url: str, control: RedisProcess
) -> None:
    streams = await open_streams("kinesis", control, moto_url, shard_count=2)
    try:
        reader, other = streams.open(), streams.open()
        events = [sample_event(f"incident-{i}") for i in range(8)]
        positions = {await reader.publish(event) for event in events}
        assert len({parse_receipt(p)[0] for p in positions}) == 2  # both shards got some

        got = await receive_n(reader, "node-1", len(events))

        assert sorted(r.event.id for r in got) == sorted(e.id for e in events)
        assert await other.receive("node-2", block_ms=50) == []
    finally:
        await streams.close()


async def test_kinesis_stream_is_created_once_and_active(kinesis: Streams) -> None:
    stream: KinesisEventStream = kinesis.open()
    await stream.ensure_stream()  # already there: no error, nothing recreated
    await stream.publish(sample_event())
    await stream.ensure_stream()
    assert len(await receive_n(stream, "node-1", 1)) == 1


async def test_a_consumer_whose_group_went_with_the_store_restarted_empty_makes_it_again(
    control: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis only: the Kinesis backend keeps no consumer group of Redis Streams.
    streams = Streams("redis", control.url, None)
    consumer, sensor = streams.open(), streams.open()
    try:
        await consumer.publish(sample_event("incident-1"))
        [taken] = await receive_n(consumer, "node-1", 1)  # the group made, and remembered
        await consumer.ack(taken)
        control.restart(empty=True)
        # Published before any consumer looks again: a group made anew from `$` would skip it.
        after = sample_event("incident-2")
        await sensor.publish(after)

        got = await receive_n(consumer, "node-1", 1)

        assert [r.event for r in got] == [after]
        assert consumer.groups_recreated == 1
        assert "node-1: the consumer group lazarus of stream lz:events was gone" in caplog.text
    finally:
        await streams.close()


def test_open_event_stream_rejects_an_unknown_backend(control: RedisProcess) -> None:
    with pytest.raises(ValueError, match="kafka"):
        open_event_stream("kafka", control.url)


# -- the controller's consuming loop on each backend ------------------------------------------


class Handler:
    """A controller's event handling that takes `seconds` (a slow pager's retries) and, for the
    first `pending` calls, raises DecisionPending; counts the calls per event."""

    def __init__(self, seconds: float = 0.0, pending: int = 0) -> None:
        self.seconds = seconds
        self.pending = pending
        self.calls: dict[str, int] = {}

    async def __call__(self, event: Event) -> None:
        self.calls[event.id] = self.calls.get(event.id, 0) + 1
        await asyncio.sleep(self.seconds)
        if self.pending:
            self.pending -= 1
            raise DecisionPending(f"event {event.id}: still undecided")


async def consuming(stream: Any, node: str, handler: EventHandler) -> asyncio.Task:
    handling: set[asyncio.Task] = set()
    loop = consume_events(stream, node, handler, handling, keep_every=RECLAIM_MS / 3000)
    return asyncio.create_task(loop)


async def wait_until(what: str, condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stop(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_event_handled_longer_than_the_reclaim_interval_is_handled_once(
    streams: Streams,
) -> None:
    handler = Handler(seconds=RECLAIM_MS * 2 / 1000)
    first, second = streams.open(), streams.open()
    event = sample_event()
    await first.publish(event)
    node_1 = await consuming(first, "node-1", handler)
    await wait_until("node-1 to take the event", lambda: _true(handler.calls))
    node_2 = await consuming(second, "node-2", handler)
    try:
        await wait_until("the handling to end", lambda: _nothing_in_flight(first))
        assert handler.calls == {event.id: 1}
    finally:
        await stop(node_1, node_2)


async def test_an_event_whose_decision_is_pending_is_handed_out_again_and_acknowledged(
    streams: Streams,
) -> None:
    handler = Handler(pending=1)
    stream = streams.open()
    event = sample_event()
    await stream.publish(event)
    copies: list[str] = []
    publish = stream.publish

    async def publish_copy(copy: Event) -> str:
        copies.append(copy.id)
        return await publish(copy)

    # Handed out again as a copy, not by the stream's reclaim of the unacknowledged original.
    stream.publish = publish_copy
    node = await consuming(stream, "node-1", handler)  # the consumer lives on throughout
    try:
        await wait_until(
            "the event to be handled again", lambda: _true(handler.calls.get(event.id, 0) >= 2)
        )
        await wait_until("nothing left unacknowledged", lambda: _nothing_in_flight(stream))
        assert handler.calls == {event.id: 2} and copies == [event.id]
    finally:
        await stop(node)


async def test_an_event_refused_for_another_events_id_is_dead_lettered_and_handled_once(
    streams: Streams,
) -> None:
    calls: list[str] = []

    async def refuse_reused_id(event: Event) -> None:
        calls.append(event.id)
        raise EventIdReused(f"event id {event.id!r} is already the id of another event")

    stream = streams.open()
    event = sample_event()
    await stream.publish(event)
    node = await consuming(stream, "node-1", refuse_reused_id)
    try:
        await wait_until("the event to be dead-lettered", streams.dead_letters)
        await wait_until("nothing left unacknowledged", lambda: _nothing_in_flight(stream))
        await asyncio.sleep(RECLAIM_MS / 1000 + 0.1)  # past the reclaim of an unacknowledged one
        [dead] = await streams.dead_letters()
        assert "already the id of another event" in dead["reason"]
        assert calls == [event.id]
    finally:
        await stop(node)


async def _true(value: object) -> bool:
    return bool(value)


async def _nothing_in_flight(stream: Any) -> bool:
    if isinstance(stream, KinesisEventStream):
        return stream.in_flight() == 0
    return await stream.pending() == 0
