"""The event stream between sensors and controllers, behind one interface with two backends:
Redis Streams on the control store (the default) and AWS Kinesis (see `detection.kinesis`).

Every entry is validated on receipt (`validate_entry`, as `POST /v1/events` validates a body): a
malformed one, or one dated further ahead than `max_event_ahead` of its arrival in the stream (by
the stream's clock, not the receiver's: an entry id's milliseconds, Kinesis's arrival timestamp),
is written to the dead-letter stream with the reason and acknowledged, so it never stops a
consumer nor holds up the valid events taken with it. An event a consumer refuses once it has
read it (`refuse`) goes the same way. Entries a consumer took and never acknowledged (it died)
are reclaimed by the others after `reclaim_idle_ms`; a consumer handling an entry for longer
keeps it with `keep`.
A consumer that finds the stream's group gone (NOGROUP: the control store restarted empty, or
the stream or group was deleted) creates it again and goes on, counting it in
`groups_recreated` and logging it: the store's other state (kill switch, locks) went with it.
Not for: deciding what to do with an event (lazarus_lite does that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from detection.errors import InvalidEvent
from detection.events import MAX_EVENT_AHEAD, Event, parse_arriving_event

log = logging.getLogger(__name__)

EVENTS_STREAM = "lz:events"
DEAD_LETTER_STREAM = "lz:events:dead"
CONSUMER_GROUP = "lazarus"
STREAM_MAX_LENGTH = 100_000

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id. Resets the entry's idle
# time only while `consumer` still holds it (one that lost it must not take it back).
_KEEP_ENTRY = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if held[1] == nil or held[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


@dataclass(frozen=True)
class Received:
    """One valid event taken from the stream; pass it back to `ack` once it is handled."""

    receipt: str
    event: Event


class EventStream(Protocol):
    async def publish(self, event: Event) -> str:
        """Append an event; returns its position in the stream."""

    async def receive(
        self, consumer: str, *, count: int = 10, block_ms: int = 100
    ) -> list[Received]:
        """Take up to `count` valid events for `consumer` (waiting up to `block_ms`)."""

    async def ack(self, received: Received) -> None:
        """Mark an event handled, so no other consumer reclaims it."""

    async def keep(self, consumer: str, received: Received) -> None:
        """Keep an event still being handled with `consumer`: call it more often than the
        reclaim interval, or another consumer is handed the event meanwhile."""

    async def refuse(self, received: Received, reason: str) -> None:
        """Dead-letter an event its consumer cannot decide (`reason` says why), and acknowledge
        it, so it is not handed out again."""

    async def close(self) -> None: ...


def certainly_not_published(error: BaseException) -> bool:
    """Whether a failed publish to a Redis stream never reached it: its one connection attempt
    was refused (`RedisEventStream` makes one attempt: a client that retries could have sent
    the command before a reconnect was refused). A timeout, a cancellation, a reset or a closed
    connection may come after the stream took the event, so they say nothing, also when a
    refusal is further down the chain (a timeout that cancelled a retry's backoff). Kinesis is
    never certain: botocore retries a put whose connection closed."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TimeoutError | asyncio.CancelledError | RedisTimeoutError):
            return False
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class DeadLetters:
    """Malformed entries with the reason they were refused, kept in the control store."""

    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def record(self, raw: str | bytes, reason: str, *, backend: str, position: str) -> None:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        await self._control.xadd(
            DEAD_LETTER_STREAM,
            {"raw": text[:65536], "reason": reason, "backend": backend, "position": position,
             "at": str(time.time())},
            maxlen=STREAM_MAX_LENGTH, approximate=True,
        )  # fmt: skip

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = await self._control.xrevrange(DEAD_LETTER_STREAM, count=limit)
        return [
            {"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
            for entry_id, fields in entries
        ]


def is_nogroup(error: BaseException) -> bool:
    """Whether Redis refused a stream command because the stream or its group does not exist
    (also from inside a script: its error carries the command's)."""
    return "NOGROUP" in str(error)


def validate_entry(
    raw: str | bytes, *, max_ahead: float = MAX_EVENT_AHEAD, arrived_at: datetime | None = None
) -> Event:
    """Parse a stream entry's payload as an arriving event, judged against `arrived_at` (when the
    stream recorded the entry, by its clock; this node's clock without it); raises InvalidEvent,
    whatever is wrong with it: an error the parser did not foresee is one too, since raised out
    of `receive` it would hold up every event after the entry, for good."""
    try:
        return parse_arriving_event(raw, max_ahead=max_ahead, arrived_at=arrived_at)
    except InvalidEvent:
        raise
    except Exception as error:
        log.exception("an event stream entry failed its validation unexpectedly")
        raise InvalidEvent(f"event could not be read: {type(error).__name__}: {error}") from None


def entry_arrival(entry_id: str) -> datetime | None:
    """When the Redis server appended a stream entry: an id it generated (`XADD *`, as every
    publisher here does) begins with the server's clock in milliseconds. None for an id that is
    not one (the entry is then judged against this node's clock)."""
    milliseconds, _, sequence = entry_id.partition("-")
    if not (milliseconds.isdigit() and sequence.isdigit()):
        return None
    return datetime.fromtimestamp(int(milliseconds) / 1000, UTC)


class RedisEventStream:
    """Redis Streams on the control store, read through one consumer group."""

    backend = "redis"

    def __init__(
        self,
        control: aioredis.Redis,
        *,
        stream: str = EVENTS_STREAM,
        group: str = CONSUMER_GROUP,
        reclaim_idle_ms: int = 10_000,
        max_event_ahead: float = MAX_EVENT_AHEAD,
    ) -> None:
        self._control = control
        self._stream = stream
        self._group = group
        self._reclaim_idle_ms = reclaim_idle_ms
        self._max_event_ahead = max_event_ahead
        self._group_ready = False
        self.groups_recreated = 0  # times this consumer found the group gone and made it again
        self.dead_letters = DeadLetters(control)
        self._keep_entry = control.register_script(_KEEP_ENTRY)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisEventStream:
        # One attempt per call, pinned: a publish refused on a reconnect after its first
        # attempt was sent may have reached the stream (`certainly_not_published`).
        connection = aioredis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        return cls(connection, **options)

    async def publish(self, event: Event) -> str:
        entry_id = await self._control.xadd(
            self._stream, {"event": event.to_json()}, maxlen=STREAM_MAX_LENGTH, approximate=True
        )
        return entry_id.decode()

    async def publish_raw(self, payload: str) -> str:
        """Append an unvalidated payload (for tests of the dead-letter path and for relays)."""
        entry_id = await self._control.xadd(self._stream, {"event": payload})
        return entry_id.decode()

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        await self._create_group()
        self._group_ready = True

    async def _create_group(self) -> bool:
        """Create the group (and the stream) unless it exists; whether this call created it.
        From id 0, the stream's first entry: when the group is created anew after the store
        restarted empty, every entry in the stream was published since the restart and none was
        decided yet, so `$` (only what comes later) would skip the events sensors published
        between the restart and this call. An entry older than that (the group alone deleted)
        is handed out again, and its event is collapsed as a duplicate or refused as stale."""
        try:
            await self._control.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except aioredis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
            return False
        return True

    async def _recreate_group(self, consumer: str, error: aioredis.ResponseError) -> None:
        """The group is gone (NOGROUP): create it again, once for every consumer that finds
        it gone (another may have created it first)."""
        created = await self._create_group()
        if created:
            self.groups_recreated += 1
        log.warning(
            "%s: the consumer group %s of stream %s was gone (%s): %s; the control store "
            "probably restarted empty, and the kill switch, circuit breaker, shadow mode and "
            "locks it held are gone with it",
            consumer, self._group, self._stream, error,
            "created it again from the stream's first entry" if created
            else "another consumer created it again",
        )  # fmt: skip

    async def receive(
        self, consumer: str, *, count: int = 10, block_ms: int = 100
    ) -> list[Received]:
        await self._ensure_group()
        try:
            entries = await self._take(consumer, count, block_ms)
        except aioredis.ResponseError as error:
            if not is_nogroup(error):
                raise
            # Remembering that the group exists is only a shortcut: without making it again,
            # no consumer would ever take an event from this stream again.
            await self._recreate_group(consumer, error)
            entries = await self._take(consumer, count, block_ms)
        received = []
        for entry_id, fields in entries:
            position = entry_id.decode()
            raw = fields.get(b"event", b"")
            try:
                # Judged by the Redis server's clock, which dated the entry: this node's own
                # skew must not dead-letter good events (nor pass ones dated ahead).
                event = validate_entry(
                    raw, max_ahead=self._max_event_ahead, arrived_at=entry_arrival(position)
                )
            except InvalidEvent as error:
                await self._dead_letter(raw, error.reason, position)
                continue
            received.append(Received(receipt=position, event=event))
        return received

    async def _take(self, consumer: str, count: int, block_ms: int) -> list[tuple[bytes, Any]]:
        """Up to `count` raw entries for `consumer`: reclaimed ones, else new ones."""
        # Entries a dead consumer took first: they are older than anything new.
        _, claimed, *_ = await self._control.xautoclaim(
            self._stream, self._group, consumer, self._reclaim_idle_ms, start_id="0-0", count=count
        )
        entries = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if not entries:
            answer = await self._control.xreadgroup(
                self._group, consumer, {self._stream: ">"}, count=count, block=block_ms
            )
            entries = answer[0][1] if answer else []
        return entries

    async def _dead_letter(self, raw: str | bytes, reason: str, position: str) -> None:
        await self.dead_letters.record(raw, reason, backend=self.backend, position=position)
        await self._control.xack(self._stream, self._group, position)

    async def refuse(self, received: Received, reason: str) -> None:
        await self._dead_letter(received.event.to_json(), reason, received.receipt)

    async def ack(self, received: Received) -> None:
        await self._control.xack(self._stream, self._group, received.receipt)

    async def keep(self, consumer: str, received: Received) -> None:
        await self._keep_entry(keys=[self._stream], args=[self._group, consumer, received.receipt])

    async def pending(self) -> int:
        await self._ensure_group()
        summary = await self._control.xpending(self._stream, self._group)
        return int(summary["pending"])

    async def close(self) -> None:
        await self._control.aclose()
