"""The Python client: routes each number to its shard's primary by the topology, retries what is
retryable with exponential backoff and jitter within a time bound, and refreshes the topology on
a connection error, `READONLY`, an epoch mismatch, a notification, or periodically.

`AsyncRatequeueClient` is the implementation; `RatequeueClient` runs it on a private event loop
thread for synchronous callers. Not for: HTTP (the service wraps this client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.cancellation import cancel_until_done, stop_if_cancelled
from common.etcd_client import EtcdClient
from common.retry import RetryPolicy
from ratequeue.errors import (
    MESSAGE_REFUSALS,
    IdConflict,
    InvalidInput,
    MessageTooLarge,
    QueueFull,
    RetryableError,
    ShardUnavailable,
    TopologyUnavailable,
    own_instance,
)
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.numbers import normalize_number, number_type
from ratequeue.rates import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_NUMBER_SEGMENTS,
    DEFAULT_MAX_QUEUE_SECONDS,
    DEFAULT_RATES,
    Rate,
)
from ratequeue.segments import segments_for_body
from ratequeue.shard import (
    MESSAGE_ID,
    EnqueueOutcome,
    LeasedMessage,
    NumberState,
    OutgoingMessage,
    ShardQueue,
    ShardStats,
    parse_receipt,
)
from ratequeue.slots import slot_for
from ratequeue.topology import NodeRef, Shard, Topology, TopologySource, TopologyStore

log = logging.getLogger(__name__)
T = TypeVar("T")
# Connections opened to each replica ahead of its promotion: the requests a failover held all
# retry at the same moment, and each would otherwise open its own connection then.
WARM_CONNECTIONS = 4


class ClientRetryPolicy(RetryPolicy):
    """The queue client's retries: full jitter (a uniform wait between 0 and the policy's delay,
    so clients that failed together do not retry together) and a `deadline` in seconds after
    which no retry starts. By default 6 attempts, waits up to 0.1 s, then twice that, at most
    1 s, within 4 s."""

    max_attempts: int = Field(6, ge=1, le=1000)
    backoff: float = Field(0.1, ge=0, le=60)
    max_backoff: float | None = Field(1.0, ge=0, le=60)
    deadline: float = Field(4.0, ge=0, description="no retry starts later than this")

    def delay(self, attempt: int) -> float:
        return random.uniform(0, super().delay(attempt))


@dataclass(frozen=True)
class ClientSettings:
    min_replicas: int = 1
    wait_timeout_ms: int = 1000
    dedup_window_seconds: int = 3600
    max_queue_seconds: float = DEFAULT_MAX_QUEUE_SECONDS
    max_number_segments: int = DEFAULT_MAX_NUMBER_SEGMENTS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    refresh_interval: float = 2.0
    connect_timeout: float = 0.5
    retry: ClientRetryPolicy = field(default_factory=ClientRetryPolicy)
    # The most messages one enqueue script call carries. A shard runs one script at a time and
    # answers nothing else meanwhile (its sensors' pings included): about 20 µs a message here,
    # so 2,000 keep a call near 40 ms, far from the silence that counts as a stall (~0.7 s).
    # `enqueue_many` sends a larger share of one shard as calls of this size, one after another.
    max_messages_per_call: int = 2000
    # The most message bytes one enqueue script call carries, counted as the bodies', ids' and
    # numbers' UTF-8 bytes (at least one message whatever its size). While a call runs, its
    # arguments sit in the primary's memory twice (the query buffer and the script's argv) and
    # count against maxmemory: a call of megabytes would be refused as a full shard by one
    # that has room for each of its messages sent alone.
    max_bytes_per_call: int = 256 * 1024


@dataclass(frozen=True)
class Enqueued:
    id: str
    number: str
    shard: str
    duplicate: bool


@dataclass(frozen=True)
class NumberInfo:
    number: str
    type: str
    shard: str
    depth: int
    held_segments: int
    capacity_segments: int
    rate: Rate
    rate_source: str
    next_eligible_at: float
    """Unix time (seconds) when the number may send next."""


# Canonical (keys sorted): a retry whose object keys come in another order is the same message
# (a duplicate), not another one under the same id (a conflict). One encoder for every call:
# `json.dumps` with options builds a new one each time.
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def encode_body(body: Any) -> str:
    return _CANONICAL_JSON.encode(body)


def new_message_id() -> str:
    return uuid.uuid4().hex


def validate_message_id(message_id: str) -> str:
    if not isinstance(message_id, str) or not MESSAGE_ID.fullmatch(message_id):
        raise InvalidInput(
            "id must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
            code="invalid_id",
        )
    return message_id


class AsyncRatequeueClient:
    def __init__(
        self,
        control_url: str,
        settings: ClientSettings | None = None,
        *,
        topology: TopologySource | None = None,
    ) -> None:
        """`topology`: where the map is read and watched, when not in the control store (the
        caller closes it)."""
        self.settings = settings or ClientSettings()
        self._control = aioredis.Redis.from_url(
            control_url,
            socket_connect_timeout=self.settings.connect_timeout,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._store: TopologySource = topology or TopologyStore(self._control)
        self._topology: Topology | None = None
        self._topology_loaded_at = 0.0
        self._epoch_taken_at: float | None = None
        self._nodes: dict[str, aioredis.Redis] = {}
        self._queues: dict[tuple[str, str], ShardQueue] = {}
        self._refresh_lock = asyncio.Lock()
        # Set (and replaced) whenever a newer topology is loaded: requests held by a failover
        # retry the moment the new primary is known, not after their backoff.
        self._newer_topology = asyncio.Event()
        self._background: list[asyncio.Task] = []
        # Work a new topology starts beside the requests (`_warm_replicas`, closing the nodes
        # `_drop_unlisted` forgets); kept referenced, since the loop holds tasks only weakly.
        self._topology_work: set[asyncio.Task[None]] = set()
        self._warming: asyncio.Task[None] | None = None  # of the newest topology only
        # The tasks running a call on each primary (`_on_primary`), and those of them cancelled
        # because a newer topology moved that primary.
        self._calls_on: dict[str, set[asyncio.Task[Any]]] = {}
        self._moved: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, *, require_topology: bool = True) -> AsyncRatequeueClient:
        """Load the topology and start following changes. Raises TopologyUnavailable if the
        control store holds none or cannot be reached, unless `require_topology` is False (then
        the periodic refresh keeps trying, and calls fail with TopologyUnavailable meanwhile)."""
        await self.refresh_topology()
        if self._topology is None and require_topology:
            raise TopologyUnavailable("no topology in the control store")
        self._background = [
            asyncio.create_task(self._follow_notifications(), name="topology-notifications"),
            asyncio.create_task(self._refresh_periodically(), name="topology-refresh"),
        ]
        return self

    async def close(self) -> None:
        self._closing = True  # the loops also stop at their next turn
        await cancel_until_done([*self._background, *self._topology_work])
        for node in list(self._nodes.values()):
            await node.aclose()
        await self._control.aclose()

    async def __aenter__(self) -> AsyncRatequeueClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- topology --------------------------------------------------------------------------
    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise TopologyUnavailable("topology not loaded")
        return self._topology

    @property
    def topology_age(self) -> float:
        return time.monotonic() - self._topology_loaded_at

    @property
    def epoch_taken_at(self) -> float | None:
        """When (Unix time) this client began routing by the epoch it has: a rereading of the
        same epoch does not move it; None before any topology."""
        return self._epoch_taken_at

    async def refresh_topology(self) -> Topology | None:
        """Read the topology; keep the cached one if the control store cannot be reached."""
        async with self._refresh_lock:
            try:
                loaded = await self._store.load()
            except Exception as error:
                log.warning("topology refresh failed: %s", error)
                return self._topology
            self._accept(loaded)
            return self._topology

    def _accept(self, loaded: Topology | None) -> None:
        """Keep `loaded` unless the cached topology is newer."""
        if loaded is not None and (self._topology is None or loaded.epoch >= self._topology.epoch):
            newer = self._topology is None or loaded.epoch > self._topology.epoch
            self._topology = loaded
            self._topology_loaded_at = time.monotonic()
            if newer:
                self._epoch_taken_at = time.time()
                self._newer_topology.set()
                self._newer_topology = asyncio.Event()
                self._cancel_calls_on_moved_primaries(loaded)
                self._drop_unlisted(loaded)
                if self._warming is not None:
                    # It would open connections to replicas `loaded` may no longer list.
                    self._warming.cancel()
                self._warming = self._spawn(self._warm_replicas(loaded), "warming the replicas")

    def _drop_unlisted(self, topology: Topology) -> None:
        """Close and forget the nodes `topology` lists as neither primary nor replica (a deposed
        primary kept for forensics, a replica replaced): nothing routes to them any more, and
        a call still held on one (a stalled node accepts the connection but answers nothing)
        fails at once and is retried on the new primary instead of waiting for its socket
        timeout. Safe: nothing is acknowledged without the new primary's `WAIT`, and a retry
        keeps its message ids."""
        if self._closing:
            return  # close() closes every node
        listed = {
            node.address for shard in topology.shards for node in (shard.primary, *shard.replicas)
        }
        for address in [address for address in self._nodes if address not in listed]:
            node = self._nodes.pop(address)
            for key in [key for key in self._queues if key[1] == address]:
                del self._queues[key]
            self._spawn(node.aclose(), f"closing {address}")

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None] | None:
        """Run `work` beside the requests (kept referenced, cancelled at close; its failure
        logged, never left unretrieved). None is started once the client is closing."""
        if self._closing:
            work.close()
            return None
        # The coroutine itself is the task: one cancelled before it starts is closed, not left
        # never awaited.
        task = asyncio.get_running_loop().create_task(work, name=what)
        self._topology_work.add(task)
        task.add_done_callback(lambda done: self._settle(done, what))
        return task

    def _settle(self, task: asyncio.Task[None], what: str) -> None:
        self._topology_work.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Best effort: the request path copes without it.
            log.debug("%s failed: %s", what, error)

    async def _warm_replicas(self, topology: Topology) -> None:
        """Open a connection to every replica and load the scripts there, off the request path:
        the replica a failover promotes then takes the first write held during the outage on a
        connection already open, with its scripts already cached (Redis does not replicate the
        script cache). Loaded on every topology, not once: a replica that restarted since has an
        empty cache. Best effort: a replica that cannot be reached now is loaded on first use."""
        replicas = [(shard.id, replica) for shard in topology.shards for replica in shard.replicas]
        # All at once: a stalled replica holds only its own warming, not the others'.
        outcomes = await asyncio.gather(
            *(self._warm_replica(topology, shard_id, replica) for shard_id, replica in replicas),
            return_exceptions=True,
        )
        for (shard_id, replica), outcome in zip(replicas, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.debug(
                    "replica %s of shard %s not warmed: %s", replica.address, shard_id, outcome
                )

    async def _warm_replica(self, topology: Topology, shard_id: str, replica: NodeRef) -> None:
        if self._superseded(topology):
            return  # `replica` may be unlisted now, and must not be reconnected
        queue = self._queue_at(shard_id, replica)
        try:
            await queue.load_scripts()
        except ShardUnavailable:
            # A pooled connection that the replica's restart closed fails once (and is dropped
            # from the pool): the next one is new.
            await queue.load_scripts()
        if self._superseded(topology):
            return
        # At once, so each takes a connection of its own, which the pool then keeps open.
        node = self._node(replica)
        await asyncio.gather(*(node.ping() for _ in range(WARM_CONNECTIONS)))

    def _superseded(self, topology: Topology) -> bool:
        return self._topology is None or self._topology.epoch != topology.epoch

    async def _follow_notifications(self) -> None:
        """Take each newer topology the store's watch delivers."""
        while not self._closing:
            try:
                known = self._topology.epoch if self._topology is not None else 0
                watch = self._store.watch(
                    after_epoch=known, refresh_every=self.settings.refresh_interval
                )
                async for topology in watch:
                    self._accept(topology)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                stop_if_cancelled()
                log.debug("topology notifications interrupted: %s", error)
                await asyncio.sleep(self.settings.refresh_interval)

    async def _refresh_periodically(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.refresh_interval)
            await self.refresh_topology()
            stop_if_cancelled()

    def _node(self, node: NodeRef) -> aioredis.Redis:
        connection = self._nodes.get(node.address)
        if connection is None:
            connection = aioredis.Redis(
                host=node.host,
                port=node.port,
                socket_connect_timeout=self.settings.connect_timeout,
                socket_timeout=self.settings.wait_timeout_ms / 1000 + 1.0,
                retry=Retry(NoBackoff(), 0),
            )
            self._nodes[node.address] = connection
        return connection

    def _queue(self, shard: Shard) -> ShardQueue:
        return self._queue_at(shard.id, shard.primary)

    def _queue_at(self, shard_id: str, node: NodeRef) -> ShardQueue:
        """The queue of `shard_id` reached through `node` (its primary, or a replica warmed
        to become one)."""
        key = (shard_id, node.address)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = ShardQueue(
                shard_id,
                self._node(node),
                dedup_window_seconds=self.settings.dedup_window_seconds,
                max_queue_seconds=self.settings.max_queue_seconds,
                max_number_segments=self.settings.max_number_segments,
            )
        return queue

    def shard_for(self, number: str) -> Shard:
        return self.topology.shard_for_slot(slot_for(number))

    def _calls(self, messages: list[OutgoingMessage], indexes: list[int]) -> Iterator[list[int]]:
        """`indexes` (one shard's share of `messages`) cut, in order, into script calls of at
        most `max_messages_per_call` messages and `max_bytes_per_call` bytes of bodies, ids and
        numbers (UTF-8; a larger message goes alone)."""
        most_messages = max(1, self.settings.max_messages_per_call)
        call: list[int] = []
        size = 0
        for i in indexes:
            message = messages[i]
            body = message.body_json
            # Bytes, as the primary holds them (a character may be 4), with the line's id
            # and number.
            body_bytes = len(body) if body.isascii() else len(body.encode())
            length = body_bytes + len(message.id) + len(message.number)
            if call and (len(call) == most_messages
                         or size + length > self.settings.max_bytes_per_call):  # fmt: skip
                yield call
                call, size = [], 0
            call.append(i)
            size += length
        if call:
            yield call

    @staticmethod
    def _route(number: str) -> Callable[[Topology], Shard]:
        """How `number` is routed by a topology (for `_with_retries`)."""
        return lambda topology: topology.shard_for_slot(slot_for(number))

    async def _with_retries(
        self, operation: Callable[[Shard], Awaitable[T]], route: Callable[[Topology], Shard]
    ) -> T:
        """Run `operation` on the shard `route` picks in the current topology, retrying
        retryable failures after refreshing the topology, within the retry policy's bounds. An
        attempt whose shard's primary a newer topology moves is abandoned at once and retried on
        the new primary (`_on_primary`)."""
        policy = self.settings.retry
        deadline = time.monotonic() + policy.deadline
        attempt = 0
        while True:
            routed_by = self._topology.epoch if self._topology is not None else 0
            newer_topology = self._newer_topology
            try:
                return await self._on_primary(operation, route)
            except RetryableError as error:
                attempt += 1
                delay = policy.delay(attempt)
                if attempt >= policy.max_attempts or time.monotonic() + delay > deadline:
                    raise
                log.debug("retrying after %s (attempt %d)", error, attempt)
                await self.refresh_topology()
                if self._topology is not None and self._topology.epoch > routed_by:
                    continue  # routed anew (a failover was published): try the new primary now
                # Back off, but no longer than until a newer topology arrives.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(newer_topology.wait(), delay)

    async def _on_primary(
        self, operation: Callable[[Shard], Awaitable[T]], route: Callable[[Topology], Shard]
    ) -> T:
        """Run `operation` on its shard's primary; if a newer topology moves that primary first,
        `_accept` cancels the call and this raises ShardUnavailable. A call routed just before
        the topology arrived (held by a stalled primary, or reconnecting to it) then gives way
        at once instead of after its socket timeout. Safe: nothing is acknowledged without the
        new primary's `WAIT`, and a retry keeps its message ids. The call runs in the caller's
        task (no task of its own: this is the enqueue hot path)."""
        try:
            shard = route(self.topology)
        except KeyError as error:  # a newer topology no longer lists the shard
            epoch = self.topology.epoch
            raise ShardUnavailable(f"shard {error} is not in topology {epoch}") from error
        address = shard.primary.address
        task = asyncio.current_task()
        assert task is not None  # _with_retries is awaited in a task
        calls = self._calls_on.setdefault(address, set())
        calls.add(task)
        try:
            return await operation(shard)
        except asyncio.CancelledError:
            if task not in self._moved:
                raise
            self._moved.discard(task)
            if task.uncancel() > 0:
                raise  # cancelled from outside as well: that cancellation stands
            raise ShardUnavailable(f"the primary {address} of shard {shard.id} moved") from None
        finally:
            calls.discard(task)
            if not calls and self._calls_on.get(address) is calls:
                del self._calls_on[address]
            if task in self._moved:  # the call swallowed its cancellation and finished
                self._moved.discard(task)
                task.uncancel()

    def _cancel_calls_on_moved_primaries(self, topology: Topology) -> None:
        """Cancel the calls `_on_primary` runs on a node `topology` lists as no shard's primary
        (flagged as moved, so they are retried rather than the caller cancelled)."""
        primaries = {shard.primary.address for shard in topology.shards}
        for address, calls in self._calls_on.items():
            if address not in primaries:
                for task in calls - self._moved:
                    self._moved.add(task)
                    task.cancel()

    # -- producers -------------------------------------------------------------------------
    def prepare(self, number: str, body: Any, message_id: str | None = None) -> OutgoingMessage:
        """Validate and encode one message (raises InvalidInput / InvalidNumber, or
        MessageTooLarge for a body over `max_message_bytes` as stored)."""
        canonical = normalize_number(number)
        body_json = encode_body(body)
        limit = self.settings.max_message_bytes
        # Counted in characters first: no text of fewer characters than the limit is over it.
        if len(body_json) > limit // 4 and len(body_json.encode()) > limit:
            raise MessageTooLarge(
                f"field 'body': {len(body_json.encode())} bytes as stored (compact JSON); a "
                f"message body may have at most {limit}"
            )
        return OutgoingMessage(
            id=validate_message_id(message_id) if message_id is not None else new_message_id(),
            number=canonical,
            segments=segments_for_body(body),
            default_rate=DEFAULT_RATES[number_type(canonical)],
            body_json=body_json,
        )

    async def enqueue(self, number: str, body: Any, message_id: str | None = None) -> Enqueued:
        """Queue one message; returns once `min_replicas` replicas hold it.

        Raises QueueFull or IdConflict (nothing written), or a RetryableError once retries are
        exhausted (or a redis error the client does not map): it may be queued already, so
        retry later with the same id, the error's `message_id` (made up here when `message_id`
        is None)."""
        message = self.prepare(number, body, message_id)
        [result] = await self.enqueue_many([message])
        if isinstance(result, Exception) and not isinstance(result, MESSAGE_REFUSALS):
            result = own_instance(result)  # this message's own: the id is set on it
            result.message_id = message.id  # type: ignore[attr-defined]
        if isinstance(result, Exception):
            raise result
        return result

    async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list[Enqueued | Exception]:
        """Queue prepared messages in one batch per shard, shards in parallel; a shard's share
        larger than `settings.max_messages_per_call` messages or `settings.max_bytes_per_call`
        bytes goes as several calls, in order, each acknowledged before the next is sent. Each
        entry of the result is the message's acknowledgement or the error that refused it
        (QueueFull, IdConflict, ShardFull, a RetryableError, or whatever else its shard's batch
        raised: an error of one shard is never the answer of a message of another). A call that
        fails answers its messages and every later message of its shard with its error (none of
        those was sent), so a producer's retry keeps each number's order."""
        messages = list(messages)
        by_shard: dict[str, list[int]] = defaultdict(list)
        for index, message in enumerate(messages):
            by_shard[self.shard_for(message.number).id].append(index)
        results: list[Enqueued | Exception] = [None] * len(messages)  # type: ignore[list-item]

        async def enqueue_shard_share(indexes: list[int]) -> None:
            start = 0
            for call in self._calls(messages, indexes):
                if not await enqueue_shard_batch(call):
                    error = results[call[0]]
                    for i in indexes[start + len(call) :]:
                        results[i] = error
                    return
                start += len(call)

        async def enqueue_shard_batch(indexes: list[int]) -> bool:
            """One script call; False if it failed (its messages answered with the error)."""
            batch = [messages[i] for i in indexes]

            async def attempt(shard: Shard) -> tuple[Shard, list[EnqueueOutcome]]:
                outcomes = await self._queue(shard).enqueue_batch(
                    shard.epoch,
                    batch,
                    min_replicas=self.settings.min_replicas,
                    wait_timeout_ms=self.settings.wait_timeout_ms,
                )
                return shard, outcomes

            try:
                shard, outcomes = await self._with_retries(attempt, self._route(batch[0].number))
            except Exception as error:  # this shard's alone: the other shards' outcomes stand
                for i in indexes:
                    results[i] = error
                return False
            for i, outcome in zip(indexes, outcomes, strict=True):
                message = messages[i]
                if outcome.status == "full":
                    results[i] = QueueFull(outcome.detail)
                elif outcome.status == "conflict":
                    results[i] = IdConflict(outcome.detail)
                elif outcome.status == "invalid":
                    results[i] = InvalidInput(outcome.detail, code="invalid_message")
                else:
                    results[i] = Enqueued(
                        id=message.id,
                        number=message.number,
                        shard=shard.id,
                        duplicate=outcome.status == "duplicate",
                    )
            return True

        await asyncio.gather(*(enqueue_shard_share(ix) for ix in by_shard.values()))
        return results

    # -- consumers -------------------------------------------------------------------------
    async def dequeue(self, max_messages: int, lease_seconds: float) -> list[LeasedMessage]:
        """Lease up to `max_messages` due messages, spread over the shards. A shard that cannot be
        reached contributes nothing this time (its messages wait; none is lost)."""
        shards = self.topology.shards
        lease_ms = max(1, round(lease_seconds * 1000))
        # Spread the quota; rotate who gets the remainder so no shard is favoured.
        offset = random.randrange(len(shards))
        quotas = [max_messages // len(shards)] * len(shards)
        for k in range(max_messages % len(shards)):
            quotas[(offset + k) % len(shards)] += 1

        async def from_shard(shard: Shard, quota: int) -> list[LeasedMessage]:
            if quota <= 0:
                return []
            try:
                return await self._queue(shard).dequeue(quota, lease_ms)
            except RetryableError as error:
                log.info("dequeue skipped shard %s: %s", shard.id, error)
                asyncio.get_running_loop().create_task(self.refresh_topology())
                return []

        batches = await asyncio.gather(
            *(from_shard(s, q) for s, q in zip(shards, quotas, strict=True))
        )
        leased = [message for batch in batches for message in batch]
        shortfall = max_messages - len(leased)
        full_shards = [s for s, b, q in zip(shards, batches, quotas, strict=True) if len(b) == q]
        if shortfall > 0 and full_shards and len(full_shards) < len(shards):
            # Shards with more due messages may fill what the emptier shards could not.
            extra = await asyncio.gather(
                *(from_shard(s, shortfall // len(full_shards)) for s in full_shards)
            )
            leased += [message for batch in extra for message in batch]
        return leased

    async def ack(self, receipts: Iterable[str]) -> int:
        """Acknowledge receipts; returns how many leases were still held and are now done."""
        by_shard: dict[str, list[str]] = defaultdict(list)
        for receipt in receipts:
            try:
                shard_id = parse_receipt(receipt)[0]
            except ValueError as error:
                raise InvalidInput(str(error), code="invalid_receipt") from error
            by_shard[shard_id].append(receipt)
        known = {shard.id for shard in self.topology.shards}
        unknown = sorted(set(by_shard) - known)
        if unknown:
            raise InvalidInput(f"receipts name unknown shard(s) {unknown}", code="invalid_receipt")

        async def ack_shard(shard_id: str, shard_receipts: list[str]) -> int:
            def route(topology: Topology) -> Shard:
                return topology.shard(shard_id)

            return await self._with_retries(
                lambda shard: self._queue(shard).ack(shard_receipts), route
            )

        counts = await asyncio.gather(*(ack_shard(s, r) for s, r in by_shard.items()))
        return sum(counts)

    # -- numbers ---------------------------------------------------------------------------
    async def set_rate(self, number: str, rate: Rate) -> str:
        canonical = normalize_number(number)

        async def attempt(shard: Shard) -> str:
            await self._queue(shard).set_rate(
                shard.epoch,
                canonical,
                rate,
                min_replicas=self.settings.min_replicas,
                wait_timeout_ms=self.settings.wait_timeout_ms,
            )
            return shard.id

        return await self._with_retries(attempt, self._route(canonical))

    async def number_info(self, number: str) -> NumberInfo:
        canonical = normalize_number(number)
        kind = number_type(canonical)

        async def attempt(shard: Shard) -> tuple[Shard, NumberState]:
            return shard, await self._queue(shard).number_state(canonical, DEFAULT_RATES[kind])

        shard, state = await self._with_retries(attempt, self._route(canonical))
        eligible_in = max(0.0, state.next_eligible_ms - state.now_ms) / 1000
        return NumberInfo(
            number=canonical,
            type=kind.value,
            shard=shard.id,
            depth=state.depth,
            held_segments=state.held_segments,
            capacity_segments=min(
                int(state.rate.per_second * self.settings.max_queue_seconds),
                self.settings.max_number_segments,
            ),
            rate=state.rate,
            rate_source=state.rate_source,
            next_eligible_at=time.time() + eligible_in,
        )

    # -- health ----------------------------------------------------------------------------
    async def shard_stats(self) -> dict[str, ShardStats | Exception]:
        """Per shard: queue statistics from its primary, or the error reaching it."""

        async def one(shard: Shard) -> ShardStats | Exception:
            try:
                return await asyncio.wait_for(self._queue(shard).stats(), timeout=1.0)
            except (RetryableError, TimeoutError) as error:
                return (
                    error
                    if isinstance(error, RetryableError)
                    else ShardUnavailable(f"shard {shard.id}: no answer within 1 s")
                )

        shards = self.topology.shards
        stats = await asyncio.gather(*(one(s) for s in shards))
        return {shard.id: stat for shard, stat in zip(shards, stats, strict=True)}

    async def control_store_reachable(self) -> bool:
        """Whether the store the topology is read from answers (within a second)."""
        try:
            await asyncio.wait_for(self._store.load(), timeout=1.0)
        except Exception:
            return False
        return True


class RatequeueClient:
    """Synchronous facade: each call runs the async client on a private loop thread."""

    def __init__(
        self,
        control_url: str,
        settings: ClientSettings | None = None,
        *,
        etcd_endpoints: str | None = None,
    ) -> None:
        """`etcd_endpoints`: the comma-separated client URLs of the etcd members that hold the
        map (read and watched there, as `serve` does with `topology_backend=etcd`); None: the
        map is in the control store. Bad endpoints are an InvalidSetting naming the argument."""
        # Checked before the loop starts, so a bad value leaves nothing running.
        self._etcd = None if etcd_endpoints is None else EtcdClient.from_setting(etcd_endpoints)
        # Built before the loop's thread starts, so a bad control_url leaves nothing running.
        self._client = AsyncRatequeueClient(
            control_url,
            settings,
            topology=None if self._etcd is None else EtcdTopologyStore(self._etcd),
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ratequeue-client", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._client.start())
        except BaseException:
            self.close()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def topology(self) -> Topology:
        return self._client.topology

    def refresh_topology(self) -> Topology | None:
        return self._call(self._client.refresh_topology())

    def enqueue(self, number: str, body: Any, message_id: str | None = None) -> Enqueued:
        return self._call(self._client.enqueue(number, body, message_id))

    def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list[Enqueued | Exception]:
        return self._call(self._client.enqueue_many(list(messages)))

    def prepare(self, number: str, body: Any, message_id: str | None = None) -> OutgoingMessage:
        return self._client.prepare(number, body, message_id)

    def dequeue(self, max_messages: int, lease_seconds: float) -> list[LeasedMessage]:
        return self._call(self._client.dequeue(max_messages, lease_seconds))

    def ack(self, receipts: Iterable[str]) -> int:
        return self._call(self._client.ack(list(receipts)))

    def set_rate(self, number: str, rate: Rate) -> str:
        return self._call(self._client.set_rate(number, rate))

    def number_info(self, number: str) -> NumberInfo:
        return self._call(self._client.number_info(number))

    def close(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._client.close())
            if self._etcd is not None:  # its connections live on this loop: closed there
                with contextlib.suppress(Exception):
                    self._call(self._etcd.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> RatequeueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
