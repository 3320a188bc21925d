"""The AWS Kinesis backend of the event stream (DESIGN.md, "Real parts": boto3 against a real
Kinesis endpoint; tests use moto's standalone server over HTTP).

`KinesisEventStream` has the same async interface as `detection.streams.RedisEventStream`:
`publish`, `receive`, `ack`, `close`. Kinesis has no consumer groups, so the group's state lives
in the Redis control store, one set of keys per (stream, group):

- a lease per Kinesis shard (`SET NX PX`, renewed by every `receive` of the consumer holding it):
  one consumer reads a shard at a time. A consumer that stops calling `receive` (it died, or it is
  stuck for longer than `lease_ms`) loses the lease, and whoever takes the shard next starts again
  from the checkpoint, so records taken but never acknowledged are delivered again, like
  `XAUTOCLAIM` on the Redis backend. Call `receive` at least once per `lease_ms` to keep shards.
- a checkpoint per shard: the highest sequence number such that this record and every earlier one
  the group received from the shard were acknowledged. It only ever moves forward (an
  out-of-order ack never skips an unacknowledged record), so a new or restarted consumer resumes
  after it and an acknowledged record is not delivered again.
- dead letters (`detection.streams.DeadLetters`): a malformed record (or one dated further ahead
  than `max_event_ahead` of its `ApproximateArrivalTimestamp`) is recorded with the reason and
  counts as acknowledged; `receive` never raises because of one. So does an event its consumer
  `refuse`s.

Receipts and positions are `"<shard id>:<sequence number>"` (sequence numbers alone are unique
per shard only). The partition key is the event's `dedup_key`, so the events of one incident stay
in order on one shard.

boto3 is synchronous: every call runs in a worker thread (`asyncio.to_thread`).
`open_event_stream` (in `detection.stream_factory`) picks this or the Redis backend from settings.
Not for: deciding what an event means, resharding order (parent shards are not drained before
their children are read), or balancing many shards across consumers (a consumer takes every
free shard).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
import redis.asyncio as aioredis
from botocore.config import Config
from botocore.exceptions import ClientError

from detection.errors import InvalidEvent
from detection.events import MAX_EVENT_AHEAD, Event
from detection.streams import CONSUMER_GROUP, DeadLetters, Received, validate_entry

DEFAULT_STREAM_NAME = "lazarus-events"  # same default as lazarus_lite.settings
DEFAULT_REGION = "us-east-1"
CONTROL_PREFIX = "lz:kinesis"
MAX_PARTITION_KEY_LENGTH = 256
MAX_GET_RECORDS = 10_000
# Too many reads for now: try again on the next poll rather than fail the consumer.
_THROTTLED = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}
)

# KEYS[1] lease key; ARGV[1] our token, ARGV[2] lease ms. Extends the lease only if we hold it.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease key; ARGV[1] our token. Gives the lease up only if we hold it.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] checkpoint hash; ARGV[1] shard id, ARGV[2] sequence number. Moves the checkpoint
# forward only. Sequence numbers are decimal strings of up to 128 bits (too big for Lua numbers)
# without leading zeros: a longer one is larger, equal lengths compare as strings.
_ADVANCE_CHECKPOINT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2]
if (not current) or #new > #current or (#new == #current and new > current) then
  redis.call('HSET', KEYS[1], ARGV[1], new)
  return 1
end
return 0
"""


def sequence_key(sequence_number: str) -> tuple[int, str]:
    """Order Kinesis sequence numbers (decimal strings) without converting them."""
    return (len(sequence_number), sequence_number)


def make_receipt(shard_id: str, sequence_number: str) -> str:
    return f"{shard_id}:{sequence_number}"


def parse_receipt(receipt: str) -> tuple[str, str]:
    shard_id, sep, sequence_number = receipt.rpartition(":")
    if not sep or not shard_id or not sequence_number.isdigit():
        raise ValueError(
            f"not a Kinesis receipt (want '<shard id>:<sequence number>'): {receipt!r}"
        )
    return shard_id, sequence_number


def record_arrival(record: dict[str, Any]) -> datetime | None:
    """When Kinesis took a record (its `ApproximateArrivalTimestamp`, by Kinesis's clock; botocore
    reads it as an aware datetime). None if a record lacks it, or has a naive one: the record is
    then judged against this node's clock."""
    arrived = record.get("ApproximateArrivalTimestamp")
    if isinstance(arrived, datetime) and arrived.utcoffset() is not None:
        return arrived
    return None


def partition_key(event: Event) -> str:
    """The event's dedup key, hashed when longer than Kinesis allows (256 characters)."""
    key = event.dedup_key
    if len(key) <= MAX_PARTITION_KEY_LENGTH:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(eq=False)
class _HeldShard:
    """A shard this instance holds the lease of, and what it has read from it in this tenure."""

    shard_id: str
    consumer: str
    token: str
    checkpoint: str | None  # where this tenure started reading, then advanced by acks
    last_read: str | None = None  # highest sequence number taken from Kinesis in this tenure
    iterator: str | None = None
    exhausted: bool = False  # a closed shard (after resharding) read to its end
    # sequence number -> acknowledged?, in the order read (ascending)
    in_flight: OrderedDict[str, bool] = field(default_factory=OrderedDict)


class KinesisEventStream:
    """An AWS Kinesis data stream, read by a consumer group kept in the Redis control store."""

    backend = "kinesis"

    def __init__(
        self,
        control: aioredis.Redis,
        *,
        stream_name: str = DEFAULT_STREAM_NAME,
        region_name: str = DEFAULT_REGION,
        endpoint_url: str | None = None,
        group: str = CONSUMER_GROUP,
        lease_ms: int = 10_000,
        poll_interval_ms: int = 200,
        shard_refresh_s: float = 30.0,
        client: Any | None = None,
        max_event_ahead: float = MAX_EVENT_AHEAD,
    ) -> None:
        if lease_ms <= 0 or poll_interval_ms <= 0:
            raise ValueError("lease_ms and poll_interval_ms must be positive")
        self._control = control
        self.stream_name = stream_name
        self.group = group
        self._lease_ms = lease_ms
        self._poll_s = poll_interval_ms / 1000
        self._shard_refresh_s = shard_refresh_s
        self._max_event_ahead = max_event_ahead
        self._kinesis = client or boto3.client(
            "kinesis",
            region_name=region_name,
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=5,
                read_timeout=10,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._instance = uuid.uuid4().hex[:12]
        self._keys = f"{CONTROL_PREFIX}:{stream_name}:{group}"
        self._held: dict[str, _HeldShard] = {}
        self._shard_ids: list[str] = []
        self._shards_listed_at = float("-inf")
        self._rotation = 0
        self._read_lock = asyncio.Lock()
        self._renew = control.register_script(_RENEW_LEASE)
        self._release = control.register_script(_RELEASE_LEASE)
        self._advance_checkpoint = control.register_script(_ADVANCE_CHECKPOINT)
        self.dead_letters = DeadLetters(control)

    @classmethod
    def from_url(cls, control_url: str, **options: Any) -> KinesisEventStream:
        return cls(aioredis.Redis.from_url(control_url, socket_timeout=5), **options)

    # -- keys -------------------------------------------------------------------------------

    def _lease_key(self, shard_id: str) -> str:
        return f"{self._keys}:lease:{shard_id}"

    @property
    def _checkpoint_key(self) -> str:
        return f"{self._keys}:checkpoints"

    # -- the stream itself --------------------------------------------------------------------

    async def ensure_stream(self, shard_count: int = 1, *, timeout: float = 120.0) -> None:
        """Create the stream if it is missing, and return once it is ACTIVE."""
        await asyncio.to_thread(self._ensure_stream, shard_count, timeout)

    def _ensure_stream(self, shard_count: int, timeout: float) -> None:
        try:
            self._kinesis.describe_stream_summary(StreamName=self.stream_name)
        except ClientError as error:
            if _code(error) != "ResourceNotFoundException":
                raise
            try:
                self._kinesis.create_stream(StreamName=self.stream_name, ShardCount=shard_count)
            except ClientError as create_error:
                if _code(create_error) != "ResourceInUseException":  # created meanwhile
                    raise
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            summary = self._kinesis.describe_stream_summary(StreamName=self.stream_name)
            status = summary["StreamDescriptionSummary"]["StreamStatus"]
            if status in ("ACTIVE", "UPDATING"):  # UPDATING streams take reads and writes
                return
            if status == "DELETING" or time.monotonic() > deadline:
                raise TimeoutError(f"Kinesis stream {self.stream_name} is {status}, not ACTIVE")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def publish(self, event: Event) -> str:
        return await self._put(event.to_json().encode(), partition_key(event))

    async def publish_raw(self, payload: str | bytes, *, key: str = "raw") -> str:
        """Append an unvalidated payload (for tests of the dead-letter path and for relays)."""
        data = payload.encode() if isinstance(payload, str) else payload
        return await self._put(data, key)

    async def _put(self, data: bytes, key: str) -> str:
        answer = await asyncio.to_thread(
            self._kinesis.put_record, StreamName=self.stream_name, Data=data, PartitionKey=key
        )
        return make_receipt(answer["ShardId"], answer["SequenceNumber"])

    # -- consuming ------------------------------------------------------------------------------

    async def receive(
        self, consumer: str, *, count: int = 10, block_ms: int = 100
    ) -> list[Received]:
        """Take up to `count` valid events from the shards `consumer` holds (or can take now),
        polling every `poll_interval_ms` for up to `block_ms`."""
        deadline = time.monotonic() + max(block_ms, 0) / 1000
        while True:
            async with self._read_lock:
                shards = await self._claim_shards(consumer)
                received: list[Received] = []
                if shards:
                    self._rotation = (self._rotation + 1) % len(shards)
                    shards = shards[self._rotation :] + shards[: self._rotation]
                for held in shards:
                    if len(received) >= count:
                        break
                    received += await self._read_shard(held, count - len(received))
            remaining = deadline - time.monotonic()
            if received or remaining <= 0:
                return received
            await asyncio.sleep(min(self._poll_s, remaining))

    async def _list_shards(self) -> list[str]:
        if time.monotonic() - self._shards_listed_at < self._shard_refresh_s and self._shard_ids:
            return self._shard_ids

        def list_all() -> list[str]:
            ids: list[str] = []
            request: dict[str, Any] = {"StreamName": self.stream_name}
            while True:
                answer = self._kinesis.list_shards(**request)
                ids += [shard["ShardId"] for shard in answer.get("Shards", [])]
                if not answer.get("NextToken"):
                    return sorted(ids)
                request = {"NextToken": answer["NextToken"]}

        self._shard_ids = await asyncio.to_thread(list_all)
        self._shards_listed_at = time.monotonic()
        return self._shard_ids

    async def _claim_shards(self, consumer: str) -> list[_HeldShard]:
        """Renew the leases `consumer` holds and take every shard whose lease is free."""
        token = f"{consumer}@{self._instance}"
        mine = []
        for shard_id in await self._list_shards():
            key = self._lease_key(shard_id)
            held = self._held.get(shard_id)
            if held is not None and held.consumer == consumer:
                if await self._renew(keys=[key], args=[held.token, self._lease_ms]):
                    mine.append(held)
                    continue
                # Lost it (we were idle too long): what we read and did not ack is someone
                # else's to deliver again now. If the lease is free we start over below.
                del self._held[shard_id]
            if await self._control.set(key, token, nx=True, px=self._lease_ms):
                raw = await self._control.hget(self._checkpoint_key, shard_id)
                checkpoint = raw.decode() if raw else None
                held = _HeldShard(shard_id, consumer, token, checkpoint, last_read=checkpoint)
                self._held[shard_id] = held
                mine.append(held)
        return mine

    async def _read_shard(self, held: _HeldShard, limit: int) -> list[Received]:
        if held.exhausted:
            return []
        try:
            if held.iterator is None:
                held.iterator = await self._shard_iterator(held.shard_id, after=held.last_read)
            answer = await asyncio.to_thread(
                self._kinesis.get_records,
                ShardIterator=held.iterator,
                Limit=min(limit, MAX_GET_RECORDS),
            )
        except ClientError as error:
            if _code(error) == "ExpiredIteratorException":
                held.iterator = None  # a fresh one starts after `last_read` on the next poll
                return []
            if _code(error) in _THROTTLED:
                return []
            raise
        held.iterator = answer.get("NextShardIterator")
        held.exhausted = held.iterator is None
        received = []
        dead_lettered = False
        for record in answer.get("Records", []):
            sequence_number = record["SequenceNumber"]
            if held.last_read is not None and sequence_key(sequence_number) <= sequence_key(
                held.last_read
            ):
                continue  # already taken in this tenure
            held.last_read = sequence_number
            receipt = make_receipt(held.shard_id, sequence_number)
            data = record["Data"]
            try:
                # Judged by Kinesis's own clock, which dated the record's arrival: this node's
                # skew must not dead-letter good events (nor pass ones dated ahead).
                event = validate_entry(
                    data, max_ahead=self._max_event_ahead, arrived_at=record_arrival(record)
                )
            except InvalidEvent as error:
                await self.dead_letters.record(data, error.reason, backend=self.backend,
                                               position=receipt)  # fmt: skip
                held.in_flight[sequence_number] = True
                dead_lettered = True
                continue
            held.in_flight[sequence_number] = False
            received.append(Received(receipt=receipt, event=event))
        if dead_lettered:
            await self._advance(held)
        return received

    async def _shard_iterator(self, shard_id: str, *, after: str | None) -> str:
        request: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard_id}
        if after is None:
            request["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            request["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            request["StartingSequenceNumber"] = after
        answer = await asyncio.to_thread(self._kinesis.get_shard_iterator, **request)
        return answer["ShardIterator"]

    async def ack(self, received: Received) -> None:
        """Mark an event handled; the shard's checkpoint moves past it once every earlier record
        is acknowledged too. An ack after the lease was lost does nothing (the shard's new holder
        delivers the event again: at least once)."""
        shard_id, sequence_number = parse_receipt(received.receipt)
        held = self._held.get(shard_id)
        if held is None or sequence_number not in held.in_flight:
            return
        held.in_flight[sequence_number] = True
        await self._advance(held)

    async def keep(self, consumer: str, received: Received) -> None:
        """Nothing to do per event: the shard's lease, renewed by every `receive`, keeps it."""

    async def refuse(self, received: Received, reason: str) -> None:
        await self.dead_letters.record(received.event.to_json(), reason, backend=self.backend,
                                       position=received.receipt)  # fmt: skip
        await self.ack(received)

    async def _advance(self, held: _HeldShard) -> None:
        new_checkpoint = None
        while held.in_flight and next(iter(held.in_flight.values())):
            new_checkpoint, _ = held.in_flight.popitem(last=False)
        if new_checkpoint is None:
            return
        held.checkpoint = new_checkpoint
        await self._advance_checkpoint(
            keys=[self._checkpoint_key], args=[held.shard_id, new_checkpoint]
        )

    async def checkpoints(self) -> dict[str, str]:
        """The group's checkpoint per shard (shards never acknowledged are absent)."""
        raw = await self._control.hgetall(self._checkpoint_key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def in_flight(self) -> int:
        """Events this instance delivered that are not acknowledged yet."""
        return sum(not acked for h in self._held.values() for acked in h.in_flight.values())

    async def release(self) -> None:
        """Give up every lease this instance holds: the next consumer starts from the checkpoint
        (so whatever was taken and not acknowledged is delivered again)."""
        held, self._held = list(self._held.values()), {}
        for shard in held:
            await self._release(keys=[self._lease_key(shard.shard_id)], args=[shard.token])

    async def close(self) -> None:
        try:
            await self.release()
        finally:
            await self._control.aclose()
            await asyncio.to_thread(self._kinesis.close)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
