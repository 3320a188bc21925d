"""The event schema: what sensors publish and the controller consumes (DESIGN.md, "Event").

One JSON shape travels the stream and `POST /v1/events`. `parse_event` validates it strictly and
raises `InvalidEvent` naming each bad field, so a malformed event can be dead-lettered with the
reason instead of stopping a consumer; `parse_arriving_event`, what every intake (REST, the Redis
stream, Kinesis) calls, also refuses an event dated ahead of its arrival (the stream's record of
it, or for REST the receiver's clock). Not for: deciding what an event means (the rules do).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from common import bounded_json
from common.errors import JsonProblem
from common.validation import ServiceName, describe_problems, quoted
from detection.errors import EventDatedAhead, InvalidEvent

EventType = Literal[
    "RedisMasterDown",
    "RedisMasterRecovered",
    "RedisReplicaDown",
    "SensorHeartbeat",
    "SensorSilent",
    "ShardUnwritable",
    "ShardDegraded",
    "HealthcheckDown",
    "NagiosHostAlarm",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
# Deeper JSON is refused before it is decoded: a request body's limit (`http_contract`; not
# imported from there, which would load the web framework into every sensor), as an event is
# served back by REST in its audit record.
MAX_JSON_DEPTH = 64
# How far ahead of its arrival (the stream's clock, or REST's receiver's) an event may be dated
# where no setting says (`max_event_ahead` of the controllers): the sensors' clock skew. An
# event dated ahead looks younger than it is by as much (the stale gate, a sensor's silence and
# a page's acknowledgement deadline all run late by it), so it is kept well under
# `sensor_silence_after` (15 s), yet far above what NTP leaves between hosts (milliseconds).
MAX_EVENT_AHEAD = 5.0
# RFC 3339's date-time (section 5.6; a space for the T, as its note allows): seconds, an optional
# fraction, and Z or an offset.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    type: EventType
    environment: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    region: str = Field(min_length=1, max_length=64)
    service: ServiceName
    shard: str | None = Field(None, max_length=64)
    host: str = Field(min_length=1, max_length=255, description="the entity the event is about")
    source: str = Field(min_length=1, max_length=255, description="who observed it")
    incident_key: str | None = Field(None, max_length=255)
    occurred_at: AwareDatetime
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        # Left to pydantic, a number (or a numeric string: "0", "1700000000") would pass as Unix
        # time; the schema says RFC 3339 text, so its shape is checked before pydantic parses.
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            raise ValueError(
                f"expected an RFC 3339 date-time such as 2026-01-01T00:00:00Z, not {quoted(value)}"
            )
        return value

    def to_json(self) -> str:
        return self.model_dump_json()

    @property
    def dedup_key(self) -> str:
        """Events with the same key describe the same incident (several sensors, one cause)."""
        return self.incident_key or f"{self.service}/{self.shard or '-'}/{self.type}/{self.host}"

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.occurred_at).total_seconds()


def new_event(
    type: str,
    *,
    environment: str,
    region: str,
    service: str,
    host: str,
    source: str,
    shard: str | None = None,
    incident_key: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    return parse_event(
        {
            "id": uuid.uuid4().hex,
            "type": type,
            "environment": environment,
            "region": region,
            "service": service,
            "shard": shard,
            "host": host,
            "source": source,
            "incident_key": incident_key,
            "occurred_at": datetime.now(UTC).isoformat(),
            "data": data or {},
        }
    )


def parse_event(raw: str | bytes | dict[str, Any]) -> Event:
    """Validate an event from JSON text or a dict; raise InvalidEvent naming what is wrong.
    Text is parsed as strictly as a request body (`bounded_json`): no NaN or Infinity, no
    integer of over 4300 digits, no nesting deeper than MAX_JSON_DEPTH, no lone surrogate."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # refused by name below, like a raw one
    if isinstance(raw, bytes):
        try:
            raw = bounded_json.loads_bytes(raw, max_depth=MAX_JSON_DEPTH)
        except JsonProblem as problem:
            raise InvalidEvent(f"event is not valid JSON: {problem}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("event must be a JSON object")
    try:
        return Event.model_validate(raw)
    except ValidationError as error:
        raise InvalidEvent(describe_problems(error)) from None


def parse_arriving_event(
    raw: str | bytes | dict[str, Any],
    *,
    max_ahead: float = MAX_EVENT_AHEAD,
    arrived_at: datetime | None = None,
) -> Event:
    """`parse_event` for an intake: an event dated more than `max_ahead` seconds ahead of its
    arrival is refused too (EventDatedAhead), since it would look younger than it is for as long
    (no stale gate, no silent sensor, no acknowledgement deadline would ever reach a year 9999).

    `arrived_at` is when a stream recorded the event (by the stream's own clock); the event is
    judged against it, not against this node's clock, so a receiver whose clock is behind does
    not refuse good events (nor one ahead let bad ones through). Without it (REST, a stream that
    records no arrival) the event is judged against this node's clock."""
    event = parse_event(raw)
    if arrived_at is not None:
        now, reference = arrived_at, "its arrival in the stream"
    else:
        now, reference = datetime.now(UTC), "this node's clock"
    if event.occurred_at > now + timedelta(seconds=max_ahead):
        ahead = (event.occurred_at - now).total_seconds()
        raise EventDatedAhead(
            f"field 'occurred_at': {event.occurred_at.isoformat()} is {ahead:,.0f} s ahead of "
            f"{reference} ({now.isoformat(timespec='seconds')}); expected a time at most "
            f"{max_ahead:g} s ahead"
        )
    return event
