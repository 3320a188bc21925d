"""The coordination store on etcd v3 (three members for the testbed and staging), through
`common.etcd_client`, with the key layout of `etcd_keys`:

- every TTL is a lease of its own, granted with the key (etcd counts whole seconds, at least
  one: a shorter TTL lasts a second), except the event bindings' and finished workflows' (30
  days): those written within the same hour share one lease (`_SharedLease`), so a busy
  controller does not keep a 30-day lease alive per event; a finished workflow's record and
  history entries are put under its lease, so they expire as on the Redis store; and the
  sliding windows' notes, which share a lease per window length (their time, not their lease,
  says whether they count);
- every "only if" is one transaction: create-if-absent compares the key's version with 0,
  renew/release/guarded saves compare the key's value (the holder or owner), and a workflow save
  also compares the record's version, so two saves cannot interleave;
- a lock's fencing token is the lock key's create_revision. etcd's revision grows by one with
  every write to the whole store and never goes back (not even on compaction), so each new lock
  key gets a revision higher than every lock granted before, without a counter key that every
  acquire would have to read and compare first (two round trips and a hot key);
- renewing a lock or a workflow's owner lease (once per workflow step, on a failover's critical
  path) keeps the key's own lease alive and reads the key under the guard, side by side
  (`refresh`): no raft write, where a put under a fresh lease was three (grant, transaction,
  revocation), and one round trip;
  the key is untouched, so its create_revision, hence the token, stays;
- the listings (active workflows, kill switches, shadowed services, sensors, balancer members,
  sliding windows) are one key per member under a prefix, read with one range read; a sliding
  window's entry holds the time it was noted, under a lease of the window's length;
- a write whose answer was lost (`EtcdOutcomeUnknown`) is resolved by reading the key: a new
  lease is granted for each write, so the key carrying our lease id proves our write applied
  (also when it committed after the read: a later round finds it), and a lease that did not
  take its key is revoked at once (it could outlive a dedup by days); idempotent writes (plain
  puts and deletes) are simply sent again.

The record log (`interface.RecordLog`: audit, escalations, shadow decisions, write failures)
stays in the Redis that carries the event stream (`RedisRecordLog` on `control_url`): nothing
decides on it, and the API's write failures are written there by the queue's nodes.

What it promises when it fails: with one member of three dead, paused or cut off, every call
goes to the others; a write acknowledged by etcd survives any single member's crash. Without a
quorum nothing here answers: calls raise `EtcdUnreachable` within the client's call timeout
(never hang); the record log raises `redis.exceptions.RedisError` when its Redis is away.
Not for: the topology's key and watch (`ratequeue.etcd_topology`) or the client itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.errors import EtcdError, EtcdLeaseNotFound, EtcdOutcomeUnknown, EtcdUnreachable
from common.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdClientSettings,
    Get,
    KeyValue,
    Operation,
    Put,
    RangeResult,
)
from detection.events import Event
from lazarus_lite.coordination import etcd_keys as keys
from lazarus_lite.coordination.interface import (
    OWNER_LEASE_MS,
    SENSOR_HEARTBEAT_RETENTION,
    HeldLock,
    StepReads,
    WindowKind,
    bound_event,
    rebound,
)
from lazarus_lite.coordination.redis_backend import (
    APPROVAL_SECONDS,
    APPROVED,
    EVENT_WORKFLOW_SECONDS,
    WORKFLOW_RETENTION_SECONDS,
    RedisRecordLog,
)
from lazarus_lite.errors import LockBusy, LockLost, OwnershipLost
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.topology import Topology

log = logging.getLogger(__name__)

# Rounds of "lost a race or an answer, read and try again" before giving up as unreachable: a
# round is lost only to another writer of the same key, so a handful is plenty.
_MAX_ROUNDS = 5
# Event bindings written within this long share one lease (each lives 30 days to 30 days and
# an hour): a lease per hour, not one per event.
BINDING_BUCKET = 3600.0
# Keys whose lease a store remembers for `_Writes.refresh` (a few locks and owner leases are
# live at once; more means finished work nobody released).
_KEPT_AT_MOST = 1024
# Below etcd's default limit of 128 operations in one transaction.
_HISTORY_PUTS_PER_TXN = 100
T = TypeVar("T")


def _seconds(ttl: float) -> int:
    return max(1, math.ceil(ttl))


def _text(found: KeyValue | None) -> str | None:
    return None if found is None else found.value.decode()


def _names(found: RangeResult, prefix: str) -> list[str]:
    """The members of a listing: each key's last segment after `prefix`, decoded, sorted."""
    return sorted(keys.name_of(kv.key[len(prefix) :]) for kv in found.kvs)


def _absent(key: str) -> Compare:
    return Compare(key=key, target="version", op="==", operand=0)


def _holds(key: str, value: str) -> Compare:
    return Compare(key=key, target="value", op="==", operand=value.encode())


class _Writes:
    """The writes every protocol here is made of, each one transaction, each resolved by a read
    when its answer is lost."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        # Revocations of leases a renewal replaced, sent after the renewal returned: a revoke
        # is a raft write of its own, and the renewal it follows (a lock asserted before an
        # action, an owner lease) is on a failover's critical path.
        self._retiring: set[asyncio.Task] = set()
        # The lease each key we refresh was last seen on (`refresh`), so a refresh is a
        # keep-alive and one read; forgotten on release, and bounded.
        self._kept: dict[str, int] = {}

    async def lease(self, ttl: float) -> int:
        return (await self.client.grant_lease(_seconds(ttl))).id

    async def leased(self, ttl: float, write: Callable[[int], Awaitable[T]]) -> T:
        """`write` under a fresh lease of `ttl`, granted again when it expired before the write
        reached etcd (a one-second lease, and an election in between)."""
        for _ in range(_MAX_ROUNDS):
            lease = await self.lease(ttl)
            try:
                return await write(lease)
            except EtcdLeaseNotFound:
                continue
        raise EtcdUnreachable(f"{_MAX_ROUNDS} leases of {ttl:g}s expired before their write")

    async def create(self, key: str, value: str, ttl: float) -> tuple[bool, KeyValue]:
        """Create `key` if absent: whether we created it, and the key as it is now (ours or the
        one that was there). A lease not used expires by itself."""
        return await self.leased(ttl, lambda lease: self._create(key, value, lease))

    async def _create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue]:
        for _ in range(_MAX_ROUNDS):
            try:
                result = await self.client.txn(
                    [_absent(key)],
                    [Put(key=key, value=value.encode(), lease=lease), Get(key=key)],
                    [Get(key=key)],
                    check=False,
                )
            except EtcdOutcomeUnknown:
                found = await self.client.get(key)
                if found is None:
                    continue  # not applied (or applied and already expired): send it again
                return await self._ours(found, lease), found
            read = result.responses[-1]
            assert isinstance(read, RangeResult)
            if read.kvs:
                # A compare that failed on our own key: an earlier round's write whose answer
                # was lost committed after its read back. The lease says whose key it is.
                return await self._ours(read.kvs[0], lease), read.kvs[0]
            # The key expired between the compare and the read of the failure branch: again.
        raise EtcdUnreachable(f"{key}: could not be created or read in {_MAX_ROUNDS} rounds")

    async def _ours(self, found: KeyValue, lease: int) -> bool:
        """Whether `found` was written under `lease`; if not, the lease is revoked, so it does
        not outlive its use (a claim's lease may last days) and a write of ours still in flight
        cannot take the key later."""
        if found.lease == lease:
            return True
        await self.revoke(lease)
        return False

    async def revoke(self, lease: int) -> None:
        """Revoke a lease no key of ours needs; when no member answers it expires by itself."""
        with contextlib.suppress(EtcdUnreachable):
            await self.client.revoke_lease(lease)

    async def replace(self, key: str, value: str, ttl: float, guard: list[Compare]) -> bool:
        """Put `key` under a fresh lease of `ttl` only if every compare of `guard` holds (a put
        on an existing key keeps its create_revision)."""
        return await self.leased(ttl, lambda lease: self._replace(key, value, lease, guard))

    async def _replace(self, key: str, value: str, lease: int, guard: list[Compare]) -> bool:
        try:
            result = await self.client.txn(
                guard,
                [Get(key=key), Put(key=key, value=value.encode(), lease=lease)],
                check=False,
            )
        except EtcdOutcomeUnknown:
            found = await self.client.get(key)
            if found is not None and found.lease == lease:
                return True
            await self.revoke(lease)
            return False
        if not result.succeeded:
            await self.revoke(lease)
            return False
        await self.retire(result.responses[0], lease)
        return True

    def keep(self, key: str, lease: int) -> None:
        """`key` is ours on `lease` (just created or refreshed): the next refresh starts there."""
        if len(self._kept) >= _KEPT_AT_MOST and key not in self._kept:
            self._kept.clear()  # keys of finished work; a refresh reads the lease again
        self._kept[key] = lease

    def forget(self, key: str) -> None:
        self._kept.pop(key, None)

    async def refresh(self, key: str, guard: list[Compare]) -> bool:
        """Restart the TTL of `key`'s lease if every compare of `guard` holds: a keep-alive of
        the lease the key carries and, side by side with it, a read-only transaction (guard and
        read, served without a raft write) that finds the key on that lease. True means the key
        was ours when read, on a lease whose TTL restarted at about that time, as the guarded
        put under a fresh lease (`replace`) would say, without its grant, raft write and
        revocation. Whichever of the two etcd served first: a key leaves its lease only when
        the lease ends (then the keep-alive fails) or by a guarded write of its holder, so a key
        read on a lease that was alive after the read was still on it when the TTL restarted;
        a keep-alive that failed is settled by the sequential round below. Only for keys whose
        lease is theirs alone and whose TTL does not change between renewals (locks, owner
        leases)."""
        lease = self._kept.get(key)
        for _ in range(_MAX_ROUNDS):
            # Only Gets: a read, which the client sends to another member when unanswered.
            reading = self.client.txn(guard, [Get(key=key)], check=False)
            if lease is None:
                result = await reading
            else:
                kept, answered = await asyncio.gather(
                    self.client.keep_alive_once(lease), reading, return_exceptions=True
                )
                if isinstance(answered, BaseException):
                    raise answered
                if isinstance(kept, EtcdLeaseNotFound):
                    lease = None  # expired with its key, or the key moved to another lease
                elif isinstance(kept, BaseException):
                    raise kept
                result = answered
            read = result.responses[0] if result.succeeded else None
            if not isinstance(read, RangeResult) or not read.kvs or not read.kvs[0].lease:
                self.forget(key)
                return False
            if read.kvs[0].lease == lease:
                self.keep(key, lease)
                return True
            # First refresh here, or a lease that ended: keep the key's lease alive, read again
            # (a key read on a lease that has since ended is gone by the next read).
            lease = read.kvs[0].lease
        raise EtcdUnreachable(f"{key}: could not be refreshed in {_MAX_ROUNDS} rounds")

    async def retire(self, before: Any, lease: int) -> None:
        """Revoke, in the background, the lease a key carried before we put it under `lease`:
        no key is left on it (each lease is granted for one write), and a renewal every few
        seconds would otherwise keep a trail of idle leases for as long as their TTL."""
        assert isinstance(before, RangeResult)
        if before.kvs and before.kvs[0].lease not in (0, lease):
            task = asyncio.ensure_future(self.revoke(before.kvs[0].lease))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def settle(self) -> None:
        """Wait for the revocations still under way (before the client is closed)."""
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=self.client.settings.call_timeout)

    async def delete_if(self, key: str, guard: list[Compare]) -> bool:
        """Delete `key` only if every compare holds. A lost answer is resolved by sending it
        again; a key gone by then was released (by us, or by its lease)."""
        for _ in range(_MAX_ROUNDS):
            try:
                result = await self.client.txn(guard, [Delete(key=key)], check=False)
            except EtcdOutcomeUnknown:
                if await self.client.get(key) is None:
                    return True
                continue
            return result.succeeded
        raise EtcdUnreachable(f"{key}: no answer to a delete in {_MAX_ROUNDS} rounds")

    async def put(self, key: str, value: str, ttl: float | None = None) -> None:
        if ttl is None:
            await self.apply([Put(key=key, value=value.encode())])
            return
        # Under a fresh lease each round, never sent twice under one: the old lease a put
        # finds is revoked, and a lease put again after another writer's put could be theirs
        # to find, and revoke with the key on it.
        for _ in range(_MAX_ROUNDS):
            if await self.replace(key, value, ttl, []):
                return
        raise EtcdUnreachable(f"{key}: no answer to a put in {_MAX_ROUNDS} rounds")

    async def apply(self, operations: list[Operation]) -> list[Any]:
        """Apply idempotent operations as one transaction, sent again when its answer is lost."""
        for _ in range(_MAX_ROUNDS):
            try:
                return (await self.client.txn([], operations)).responses
            except EtcdOutcomeUnknown:
                continue
        raise EtcdUnreachable(f"no answer to {len(operations)} operations in {_MAX_ROUNDS} rounds")

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """How many keys were deleted (as the answer that came said)."""
        (deleted,) = await self.apply([Delete(key=key, prefix=prefix)])
        return int(deleted.deleted)


class _SharedLease:
    """One lease for every key of a kind written within `bucket` seconds: each key lives at
    least `ttl` (the lease lasts `ttl + bucket` from its grant) and at most `bucket` longer.
    Only for keys that need no lease of their own: a lease shared cannot say whose write a key
    is nor when it was made, and it is never revoked for one key. An event binding names a fresh
    workflow id (the value says whose write it is), a finished workflow's record and history
    only have to go some day, and a window's note holds the time it was noted (that time, not
    the lease, says whether it counts)."""

    def __init__(self, client: EtcdClient, ttl: float, bucket: float) -> None:
        self._client = client
        self._ttl = ttl
        self._bucket = bucket
        self._lease: int | None = None
        self._replace_at = 0.0
        self._granting = asyncio.Lock()  # concurrent writes wait for one grant, not one each

    async def id(self) -> int:
        async with self._granting:
            now = time.monotonic()
            if self._lease is None or now >= self._replace_at:
                granted = await self._client.grant_lease(_seconds(self._ttl + self._bucket))
                self._lease, self._replace_at = granted.id, now + self._bucket
            return self._lease

    def forget(self, lease: int) -> None:
        """`lease` is gone (revoked, or the store was wiped): the next write gets a new one."""
        if self._lease == lease:
            self._lease = None


class EtcdLocks:
    def __init__(self, writes: _Writes, ttl_ms: int = 60_000) -> None:
        self._writes = writes
        self._client = writes.client
        self.ttl_ms = ttl_ms

    async def acquire(self, kind: str, resource: str, holder: str) -> HeldLock:
        key = keys.lock(kind, resource)
        created, current = await self._writes.create(key, holder, self.ttl_ms / 1000)
        if created:
            self._writes.keep(key, current.lease)
            return HeldLock(key, holder, current.create_revision)
        held = HeldLock(key, current.value.decode(), current.create_revision)
        if held.holder == holder and await self.renew(held):
            return held
        raise LockBusy(f"{key} is held by {held.value}")

    async def assert_held(self, lock: HeldLock) -> None:
        if not await self.renew(lock):
            raise LockLost(f"{lock.key} is no longer held by {lock.holder} with token {lock.token}")

    def _guard(self, lock: HeldLock) -> list[Compare]:
        return [
            _holds(lock.key, lock.holder),
            Compare(key=lock.key, target="create_revision", op="==", operand=lock.token),
        ]

    async def renew(self, lock: HeldLock) -> bool:
        return await self._writes.refresh(lock.key, self._guard(lock))

    async def release(self, lock: HeldLock) -> bool:
        released = await self._writes.delete_if(lock.key, self._guard(lock))
        if released:
            # Only now: a release that found no member leaves the lock held, still renewable.
            self._writes.forget(lock.key)
        return released

    async def holder(self, kind: str, resource: str) -> str | None:
        found = await self._client.get(keys.lock(kind, resource))
        return None if found is None else f"{found.value.decode()}|{found.create_revision}"


class EtcdWorkflowRecords:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client
        self._bindings = _SharedLease(writes.client, EVENT_WORKFLOW_SECONDS, BINDING_BUCKET)
        # Finished workflows' records and histories expire with this lease (one an hour).
        self._finished = _SharedLease(writes.client, WORKFLOW_RETENTION_SECONDS, BINDING_BUCKET)
        self._saved_versions: dict[str, int] = {}  # running workflows' records we saved last

    async def save(
        self,
        record: WorkflowRecord,
        *entries: dict[str, Any],
        owner: str | None = None,
        new: bool = False,
        while_bound: bool = False,
    ) -> None:
        """One transaction: the record, its history entries (numbered by the record's version
        they come with, then by their place among the save's entries, so entries sort in the
        order they were saved) and the active mark, guarded by the record's version (no
        interleaved save), with `owner` by the owner lease, and `while_bound` by the event's
        binding naming the record."""
        record_key = keys.workflow_record(record.id)
        owner_key = keys.workflow_owner(record.id)
        binding_key = keys.workflow_of_event(bound_event(record)) if while_bound else None
        document = record.model_dump_json().encode()
        active = keys.active_workflow(record.id)
        # Versions a save was sent on and its answer lost: such a save may commit after the
        # read that follows, so a later round that finds our document one version on is done.
        answer_lost_at: set[int] = set()
        # The version our last save left: the compare checks it, so the read that would learn
        # it is only needed when another writer (or none of ours) came first.
        # A new record's first save compares against its absence (version 0): a read less on
        # the decision's path.
        guess = self._saved_versions.pop(record.id, 0 if new else None)
        running = record.status == "running"
        for _ in range(_MAX_ROUNDS):
            # A finished workflow's record is put under the retention lease: it expires then.
            lease = 0 if running else await self._finished.id()
            if guess is not None:
                version, guess = guess, None
            else:
                current = await self._client.get(record_key)
                version = 0 if current is None else current.version
                if (
                    current is not None
                    and current.value == document
                    and version - 1 in answer_lost_at
                ):
                    return
            guard = [Compare(key=record_key, target="version", op="==", operand=version)]
            if owner is not None:
                guard.append(_holds(owner_key, owner))
            if binding_key is not None:
                guard.append(_holds(binding_key, record.id))
            operations: list[Operation] = [Put(key=record_key, value=document, lease=lease)]
            now = time.time()
            for place, entry in enumerate(entries):
                line = json.dumps({"at": now, **entry}, default=str).encode()
                # "…05" < "…05.001" < "…05.002" < "…06": the first keeps the one-entry name.
                number = f"{version + 1:012d}" + (f".{place:03d}" if place else "")
                history_key = keys.workflow_history(record.id) + number
                operations.append(Put(key=history_key, value=line, lease=lease))
            operations.append(Put(key=active, value=b"1") if running else Delete(key=active))
            try:
                result = await self._client.txn(guard, operations, check=False)
            except EtcdLeaseNotFound:
                self._finished.forget(lease)
                continue
            except EtcdOutcomeUnknown:
                answer_lost_at.add(version)
                after = await self._client.get(record_key)
                if after is not None and after.version == version + 1 and after.value == document:
                    self._remember(record, version + 1)
                    await self._expire_history(record.id, lease)
                    return
                continue  # not applied, or someone saved since: the guard decides again
            if result.succeeded:
                self._remember(record, version + 1)
                await self._expire_history(record.id, lease)
                return
            if owner is not None and await self.owner(record.id) != owner:
                raise OwnershipLost(f"{owner} no longer owns workflow {record.id}; not saved")
            if binding_key is not None and _text(await self._client.get(binding_key)) != record.id:
                raise rebound(record)
        raise EtcdUnreachable(f"workflow {record.id}: not saved in {_MAX_ROUNDS} rounds")

    async def _expire_history(self, workflow_id: str, lease: int) -> None:
        """Put a finished workflow's earlier history entries under its record's retention lease
        (same values), a few at a time: a finished workflow is not saved again, so they are
        final. Best effort: an entry left without the lease outlives the retention, no more."""
        if not lease:
            return
        try:
            found = await self._client.get_prefix(keys.workflow_history(workflow_id))
            pending = [kv for kv in found.kvs if kv.lease != lease]
            for start in range(0, len(pending), _HISTORY_PUTS_PER_TXN):
                chunk = pending[start : start + _HISTORY_PUTS_PER_TXN]
                operations: list[Operation] = [
                    Put(key=kv.key, value=kv.value, lease=lease) for kv in chunk
                ]
                await self._client.txn([], operations, check=False)
        except (EtcdLeaseNotFound, EtcdOutcomeUnknown, EtcdUnreachable) as error:
            log.warning("workflow %s: history kept without expiry: %s", workflow_id, error)

    def _remember(self, record: WorkflowRecord, version: int) -> None:
        """The version our save left, while the workflow runs (a finished one is not saved
        again, and is forgotten)."""
        if record.status == "running":
            self._saved_versions[record.id] = version

    async def load(self, workflow_id: str) -> WorkflowRecord | None:
        found = await self._client.get(keys.workflow_record(workflow_id))
        return None if found is None else WorkflowRecord.model_validate_json(found.value)

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        found = await self._client.get_prefix(keys.workflow_history(workflow_id))
        return [json.loads(kv.value) for kv in found.kvs]

    async def active(self) -> list[str]:
        found = await self._client.get_prefix(keys.ACTIVE_WORKFLOWS)
        return _names(found, keys.ACTIVE_WORKFLOWS)

    async def claim(self, workflow_id: str, node_id: str) -> bool:
        key = keys.workflow_owner(workflow_id)
        created, current = await self._writes.create(key, node_id, OWNER_LEASE_MS / 1000)
        if created:
            self._writes.keep(key, current.lease)
        return created

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        key = keys.workflow_owner(workflow_id)
        return await self._writes.refresh(key, [_holds(key, node_id)])

    async def disown(self, workflow_id: str, node_id: str) -> None:
        key = keys.workflow_owner(workflow_id)
        if await self._writes.delete_if(key, [_holds(key, node_id)]):
            self._writes.forget(key)

    async def owner(self, workflow_id: str) -> str | None:
        return _text(await self._client.get(keys.workflow_owner(workflow_id)))

    async def bind_event(self, event_id: str, workflow_id: str) -> str | None:
        """Create the binding under the shared lease; a lost answer is resolved by the value
        (the workflow id is new, so finding it bound proves the write was ours)."""
        key = keys.workflow_of_event(event_id)
        value = workflow_id.encode()
        for _ in range(_MAX_ROUNDS):
            lease = await self._bindings.id()
            try:
                result = await self._client.txn(
                    [_absent(key)],
                    [Put(key=key, value=value, lease=lease)],
                    [Get(key=key)],
                    check=False,
                )
            except EtcdLeaseNotFound:
                self._bindings.forget(lease)
                continue
            except EtcdOutcomeUnknown:
                found = await self._client.get(key)
                if found is None:
                    continue  # not applied: send it again
                return None if found.value == value else found.value.decode()
            if result.succeeded:
                return None
            read = result.responses[-1]
            assert isinstance(read, RangeResult)
            if read.kvs:  # bound already (by an earlier round of ours whose answer was lost?)
                return None if read.kvs[0].value == value else read.kvs[0].value.decode()
            # The binding expired between the compare and the read: again.
        raise EtcdUnreachable(f"{key}: could not be bound or read in {_MAX_ROUNDS} rounds")

    async def rebind_event(self, event_id: str, workflow_id: str, *, replacing: str) -> bool:
        """One transaction guarded by the binding's value and the replaced record's absence,
        under the shared lease; a lost answer, or a compare failed on a write of ours that
        committed late, is resolved by the value (the workflow id is new, so finding it bound
        proves the write was ours)."""
        key = keys.workflow_of_event(event_id)
        value = workflow_id.encode()
        guard = [_holds(key, replacing), _absent(keys.workflow_record(replacing))]
        for _ in range(_MAX_ROUNDS):
            lease = await self._bindings.id()
            try:
                result = await self._client.txn(
                    guard, [Put(key=key, value=value, lease=lease)], [Get(key=key)], check=False
                )
            except EtcdLeaseNotFound:
                self._bindings.forget(lease)
                continue
            except EtcdOutcomeUnknown:
                found = await self._client.get(key)
                if found is not None and found.value == replacing.encode():
                    continue  # not applied: send it again (the guard decides once more)
                return found is not None and found.value == value
            if result.succeeded:
                return True
            read = result.responses[-1]
            assert isinstance(read, RangeResult)
            return bool(read.kvs) and read.kvs[0].value == value
        raise EtcdUnreachable(f"{key}: could not be rebound or read in {_MAX_ROUNDS} rounds")

    async def unbind_event(self, event_id: str, workflow_id: str) -> None:
        key = keys.workflow_of_event(event_id)
        await self._writes.delete_if(key, [_holds(key, workflow_id)])


class EtcdIncidentClaims:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def claim(self, event_type: str, dedup_key: str, event_id: str, ttl: float) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        created, _ = await self._writes.create(key, event_id, ttl)
        return created

    async def holder(self, event_type: str, dedup_key: str) -> str | None:
        return _text(await self._client.get(keys.incident_claim(event_type, dedup_key)))

    async def take_over(
        self, event_type: str, dedup_key: str, held_by: str, event_id: str, ttl: float
    ) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        return await self._writes.replace(key, event_id, ttl, [_holds(key, held_by)])

    async def release(self, event_type: str, dedup_key: str, held_by: str) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        return await self._writes.delete_if(key, [_holds(key, held_by)])

    async def held_for(self, event_type: str, dedup_key: str) -> float | None:
        found = await self._client.get(keys.incident_claim(event_type, dedup_key))
        if found is None or not found.lease:
            return None
        left = await self._client.lease_ttl(found.lease)
        return float(left) if left > 0 else None

    async def mark_recovered(self, event_type: str, dedup_key: str, ttl: float) -> None:
        await self._writes.put(keys.recovered_mark(event_type, dedup_key), "1", ttl)

    async def take_recovered(self, event_type: str, dedup_key: str) -> bool:
        # Not resent on a lost answer: a second delete would say "was not there".
        key = keys.recovered_mark(event_type, dedup_key)
        return (await self._client.delete(key)).deleted > 0


class EtcdSlidingWindows:
    """Each window is a prefix of keys, one per member, holding the time it was last noted,
    under a lease shared by the notes of windows of one length written within that length
    (`_SharedLease`), so forgotten members go by themselves after one to two windows. The
    entry's time decides membership, not its lease; so a note is one transaction on a failover's
    decision path, where a lease of its own was a grant and a transaction, two raft writes."""

    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client
        self._leases: dict[float, _SharedLease] = {}

    def _lease_for(self, window: float) -> _SharedLease:
        shared = self._leases.get(window)
        if shared is None:
            bucket = min(window, BINDING_BUCKET)
            shared = self._leases[window] = _SharedLease(self._client, window, bucket)
        return shared

    async def record(self, kind: WindowKind, name: str, member: str, window: float) -> int:
        prefix = keys.window(kind, name)
        now = time.time()
        entry = prefix + keys.part(member)
        shared = self._lease_for(window)
        for _ in range(_MAX_ROUNDS):
            lease = await shared.id()
            # The put and the count in one transaction: the count includes this member.
            put = Put(key=entry, value=repr(now).encode(), lease=lease)
            try:
                _, counted = await self._writes.apply([put, Get(key=prefix, prefix=True)])
            except EtcdLeaseNotFound:
                shared.forget(lease)  # revoked, or the store was wiped: a new one
                continue
            return len(_within(counted, prefix, now - window))
        raise EtcdUnreachable(f"{entry}: {_MAX_ROUNDS} shared leases were gone before the note")

    async def members(self, kind: WindowKind, name: str, window: float) -> list[str]:
        prefix = keys.window(kind, name)
        found = await self._client.get_prefix(prefix)
        return sorted(_within(found, prefix, time.time() - window))

    async def names(self, kind: WindowKind) -> list[str]:
        prefix = keys.windows(kind)
        found = await self._client.get_prefix(prefix)
        return sorted({keys.name_of(kv.key[len(prefix) :].split("/")[0]) for kv in found.kvs})


def _within(found: RangeResult, prefix: str, since: float) -> list[str]:
    """Members noted at or after `since` (a lease lasts whole seconds, so its expiry alone is
    not the window)."""
    return [keys.name_of(kv.key[len(prefix) :]) for kv in found.kvs if float(kv.value) >= since]


def _kill_switches(found: RangeResult) -> dict[str, dict[str, Any]]:
    start = len(keys.KILLSWITCH)
    return {keys.name_of(kv.key[start:]): json.loads(kv.value) for kv in found.kvs}


class EtcdSafetyFlags:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def engage_kill_switch(self, category: str, info: dict[str, Any]) -> None:
        await self._writes.put(keys.KILLSWITCH + keys.part(category), json.dumps(info))

    async def release_kill_switch(self, category: str) -> None:
        await self._writes.delete(keys.KILLSWITCH + keys.part(category))

    async def release_every_kill_switch(self) -> None:
        await self._writes.delete(keys.KILLSWITCH, prefix=True)

    async def kill_switches(self) -> dict[str, dict[str, Any]]:
        return _kill_switches(await self._client.get_prefix(keys.KILLSWITCH))

    async def set_shadow(self, service: str, shadowed: bool) -> None:
        key = keys.SHADOW_SERVICES + keys.part(service)
        if shadowed:
            await self._writes.put(key, "1")
        else:
            await self._writes.delete(key)

    async def clear_shadow(self) -> None:
        await self._writes.delete(keys.SHADOW_SERVICES, prefix=True)

    async def shadowed(self) -> list[str]:
        found = await self._client.get_prefix(keys.SHADOW_SERVICES)
        return _names(found, keys.SHADOW_SERVICES)


class EtcdSensorRegistry:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def record_heartbeat(self, event: Event) -> None:
        await self._writes.put(keys.SENSORS + keys.part(event.source), event.to_json())

    async def heartbeat(self, sensor: str) -> Event | None:
        found = await self._client.get(keys.SENSORS + keys.part(sensor))
        return None if found is None else Event.model_validate_json(found.value)

    async def heartbeats(self) -> list[Event]:
        heartbeats = []
        for kv in (await self._client.get_prefix(keys.SENSORS)).kvs:
            try:
                heartbeat = Event.model_validate_json(kv.value)
            except ValueError:
                continue  # one unreadable heartbeat does not hide the others
            if heartbeat.age_seconds() > SENSOR_HEARTBEAT_RETENTION:
                await self._writes.delete(kv.key)
            else:
                heartbeats.append(heartbeat)
        return heartbeats


class EtcdWatchMarks:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def file_report(self, report: str, node_id: str, ttl: float) -> bool:
        created, _ = await self._writes.create(keys.watch_reported(report), node_id, ttl)
        return created

    async def report_filer(self, report: str) -> str | None:
        return _text(await self._client.get(keys.watch_reported(report)))

    async def withdraw_report(self, report: str) -> None:
        await self._writes.delete(keys.watch_reported(report))

    async def flag_unwritable(self, shard: str, node_id: str, ttl: float) -> None:
        await self._writes.put(keys.watch_flagged(shard), node_id, ttl)

    async def unwritable_flagger(self, shard: str) -> str | None:
        return _text(await self._client.get(keys.watch_flagged(shard)))

    async def end_unwritable_episode(self, shard: str, report: str) -> None:
        flag, mark = keys.watch_flagged(shard), keys.watch_reported(report)
        await self._writes.apply([Delete(key=flag), Delete(key=mark)])


class EtcdServiceMembership:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def _listing(self, prefix: str) -> dict[str, dict[str, Any]]:
        found = await self._client.get_prefix(prefix)
        return {keys.name_of(kv.key[len(prefix) :]): json.loads(kv.value) for kv in found.kvs}

    async def members(self, service: str) -> dict[str, dict[str, Any]]:
        return await self._listing(keys.service_members(service))

    async def add(self, service: str, url: str, **info: Any) -> None:
        entry = json.dumps({"added_at": time.time(), **info})
        await self._writes.put(keys.service_members(service) + keys.part(url), entry)

    async def remove(self, service: str, url: str) -> bool:
        key = keys.service_members(service) + keys.part(url)
        return (await self._client.delete(key)).deleted > 0

    async def hold_for_forensics(self, service: str, url: str, reason: str) -> None:
        entry = json.dumps({"held_at": time.time(), "reason": reason})
        await self._writes.put(keys.service_forensics(service) + keys.part(url), entry)

    async def forensics(self, service: str) -> dict[str, dict[str, Any]]:
        return await self._listing(keys.service_forensics(service))


class EtcdApprovals:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes
        self._client = writes.client

    async def approve(self, workflow_id: str, step_name: str) -> None:
        key = keys.approval(workflow_id, step_name)
        await self._writes.put(key, APPROVED.decode(), APPROVAL_SECONDS)

    async def is_approved(self, workflow_id: str, step_name: str) -> bool:
        found = await self._client.get(keys.approval(workflow_id, step_name))
        return found is not None and found.value == APPROVED


class EtcdRunLock:
    def __init__(self, writes: _Writes) -> None:
        self._writes = writes

    async def take(self, holder: str, ttl: float) -> str | None:
        created, current = await self._writes.create(keys.RUN_LOCK, holder, ttl)
        return None if created else current.value.decode() or "?"

    async def renew(self, holder: str, ttl: float) -> bool:
        return await self._writes.replace(
            keys.RUN_LOCK, holder, ttl, [_holds(keys.RUN_LOCK, holder)]
        )

    async def release(self, holder: str) -> None:
        await self._writes.delete_if(keys.RUN_LOCK, [_holds(keys.RUN_LOCK, holder)])


class EtcdChaosSchedules:
    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    async def kept(self, name: str) -> str | None:
        found = await self._client.get(keys.chaos_schedule(name))
        return None if found is None else found.value.decode()

    async def keep(self, name: str, state_json: str) -> None:
        await self._client.put(keys.chaos_schedule(name), state_json.encode())


class EtcdCoordinationStore:
    """The coordination store on an etcd cluster, with its record log in the Redis on
    `records` (each closed by `aclose` when the store owns them)."""

    unavailable: tuple[type[Exception], ...] = (EtcdUnreachable, RedisError)

    def __init__(
        self, client: EtcdClient, records: aioredis.Redis, *, owns_connections: bool = False
    ) -> None:
        self.client = client
        self.records_connection = records
        self._owns_connections = owns_connections
        self._writes = writes = _Writes(client)
        self.locks = EtcdLocks(writes)
        self.workflows = EtcdWorkflowRecords(writes)
        self.incidents = EtcdIncidentClaims(writes)
        self.windows = EtcdSlidingWindows(writes)
        self.flags = EtcdSafetyFlags(writes)
        self.sensors = EtcdSensorRegistry(writes)
        self.watch = EtcdWatchMarks(writes)
        self.services = EtcdServiceMembership(writes)
        self.approvals = EtcdApprovals(writes)
        self.run_lock = EtcdRunLock(writes)
        self.schedules = EtcdChaosSchedules(client)
        self.records = RedisRecordLog(records)
        self.topology = EtcdTopologyStore(client)

    @classmethod
    def open(
        cls, endpoints: list[str], records_url: str, *, timeout: float = 5.0
    ) -> EtcdCoordinationStore:
        client = EtcdClient(EtcdClientSettings(endpoints=endpoints, call_timeout=timeout))
        records = aioredis.Redis.from_url(records_url, socket_timeout=timeout)
        return cls(client, records, owns_connections=True)

    async def ping(self) -> bool:
        """Whether etcd answers (a linearizable read); the record log's Redis decides nothing,
        so it is not asked."""
        await self.client.get(keys.RUN_LOCK)
        return True

    async def step_reads(self) -> StepReads:
        """One read-only transaction (no compare, two ranges): one linearizable read, one
        revision, where two separate reads cost two round trips to the leader."""
        reads = [Get(key=keys.KILLSWITCH, prefix=True), Get(key=self.topology.key)]
        switches, topology = (await self.client.txn([], reads)).responses
        if not (isinstance(switches, RangeResult) and isinstance(topology, RangeResult)):
            raise EtcdError(f"a read-only transaction answered other than two ranges: {switches!r}")
        self.topology.seen(topology.kvs[0] if topology.kvs else None)
        return StepReads(
            kill_switches=_kill_switches(switches),
            topology=Topology.model_validate_json(topology.kvs[0].value) if topology.kvs else None,
        )

    async def aclose(self) -> None:
        await self._writes.settle()
        if self._owns_connections:
            await self.client.aclose()
            await self.records_connection.aclose()
