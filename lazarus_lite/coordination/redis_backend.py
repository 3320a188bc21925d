"""The coordination store in one Redis control store (the default, and the embedded testbed's):
the keys of `redis_keys` and the Lua scripts that make each "only if" one atomic step. The keys,
values and scripts are the ones the controller always wrote, so a running deployment keeps its
locks, workflows and flags across the change.

What it promises when it fails: one `redis-server` is no consensus store. A crash loses the
writes of its last second (or more, by its `appendfsync`), and while it is down nothing here
answers (commands raise `redis.exceptions.RedisError`). Not for: the event stream
(`detection.streams`) or any other backend.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from detection.events import Event
from lazarus_lite.coordination import redis_keys as keys
from lazarus_lite.coordination.interface import (
    OWNER_LEASE_MS,
    SENSOR_HEARTBEAT_RETENTION,
    HeldLock,
    StepReads,
    WindowKind,
    bound_event,
    rebound,
)
from lazarus_lite.errors import LockBusy, LockLost, OwnershipLost
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.topology import TOPOLOGY_KEY, Topology, TopologyStore
from ratequeue.write_failures import FailureRun, read_write_failures

EVENT_WORKFLOW_SECONDS = 30 * 24 * 3600
APPROVAL_SECONDS = 7 * 24 * 3600
AUDIT_RETENTION_SECONDS = 30 * 24 * 3600
# A finished workflow's record and history are kept this long after its last save, then expire:
# weeks of scheduled chaos runs (a failover each) would otherwise keep every one forever.
WORKFLOW_RETENTION_SECONDS = 30 * 24 * 3600
APPROVED = b"approved"

# Take the lock if free (or already ours); returns the token held.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local holder, token = string.match(current, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return -1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# Renew or release only when the stored value is exactly ours.
# The stream entry and its marker in one step: a retried XADD whose reply was lost adds nothing.
_APPEND_ESCALATION_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', '10000', '*',
                    'event_id', ARGV[1], 'reason', ARGV[2], 'node', ARGV[3])
end
return false
"""

_RENEW_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_DELETE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Compare and set in one step (with a second key: only while that key does not exist): two
# events taking over one claim at once, or two nodes replacing one event's binding, one wins.
_REPLACE_IF = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# Save only while the lease is ours (else 0): a node that lost its workflow cannot overwrite the
# new owner's record; with a fifth key, only while that event binding names the workflow (else
# -1). A running workflow's keys are kept; a finished one's expire after ARGV[5] ms.
# ARGV[6] onwards: the history entries, appended in order.
_SAVE_WORKFLOW = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[3] then return 0 end
if #KEYS > 4 and redis.call('GET', KEYS[5]) ~= ARGV[4] then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
if #ARGV > 5 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 6)) end
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('SREM', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return 1
"""


# A sliding window is judged by the Redis server's clock, not the caller's: a node whose clock
# runs ahead would otherwise trim the others' entries as old (and count its own incident alone),
# one behind would count entries long gone; the window is shared, so one node's skew was every
# node's. TIME in a script that then writes is replicated by its effects (Redis 5 and later).
_SERVER_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""
# KEYS[1] the window; ARGV[1] member, ARGV[2] window seconds, ARGV[3] key TTL seconds.
_RECORD_IN_WINDOW = (
    _SERVER_NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""
)
# KEYS[1] the window; ARGV[1] window seconds. The members noted within it by the server's clock.
_MEMBERS_IN_WINDOW = (
    _SERVER_NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


class RedisLocks:
    def __init__(self, control: aioredis.Redis, ttl_ms: int = 60_000) -> None:
        self._control = control
        self.ttl_ms = ttl_ms
        self._acquire = control.register_script(_ACQUIRE)
        self._renew = control.register_script(_RENEW_IF_OURS)
        self._release = control.register_script(_DELETE_IF_OURS)

    async def acquire(self, kind: str, resource: str, holder: str) -> HeldLock:
        key = keys.lock(kind, resource)
        token = int(await self._acquire(keys=[key, keys.LOCK_TOKENS], args=[holder, self.ttl_ms]))
        if token < 0:
            current = await self._control.get(key)
            raise LockBusy(f"{key} is held by {current.decode() if current else 'someone'}")
        return HeldLock(key, holder, token)

    async def assert_held(self, lock: HeldLock) -> None:
        if not await self.renew(lock):
            raise LockLost(f"{lock.key} is no longer held by {lock.holder} with token {lock.token}")

    async def renew(self, lock: HeldLock) -> bool:
        return bool(int(await self._renew(keys=[lock.key], args=[lock.value, self.ttl_ms])))

    async def release(self, lock: HeldLock) -> bool:
        return bool(int(await self._release(keys=[lock.key], args=[lock.value])))

    async def holder(self, kind: str, resource: str) -> str | None:
        return _text(await self._control.get(keys.lock(kind, resource)))


class RedisWorkflowRecords:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._save = control.register_script(_SAVE_WORKFLOW)
        self._renew = control.register_script(_RENEW_IF_OURS)
        self._delete_if_ours = control.register_script(_DELETE_IF_OURS)
        self._replace_if = control.register_script(_REPLACE_IF)

    async def save(
        self,
        record: WorkflowRecord,
        *entries: dict[str, Any],
        owner: str | None = None,
        new: bool = False,  # one script either way: nothing to skip
        while_bound: bool = False,
    ) -> None:
        now = time.time()
        written = await self._save(
            keys=[
                keys.workflow_record(record.id),
                keys.workflow_history(record.id),
                keys.ACTIVE_WORKFLOWS,
                keys.workflow_owner(record.id),
                *([keys.workflow_of_event(bound_event(record))] if while_bound else []),
            ],
            args=[
                record.model_dump_json(),
                "1" if record.status == "running" else "0",
                owner or "",
                record.id,
                WORKFLOW_RETENTION_SECONDS * 1000,
                *(_json({"at": now, **entry}) for entry in entries),
            ],
        )
        if int(written) == 0:
            raise OwnershipLost(f"{owner} no longer owns workflow {record.id}; not saved")
        if int(written) < 0:
            raise rebound(record)

    async def load(self, workflow_id: str) -> WorkflowRecord | None:
        raw = await self._control.get(keys.workflow_record(workflow_id))
        return None if raw is None else WorkflowRecord.model_validate_json(raw)

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        entries = await self._control.lrange(keys.workflow_history(workflow_id), 0, -1)
        return [json.loads(e) for e in entries]

    async def active(self) -> list[str]:
        return sorted(m.decode() for m in await self._control.smembers(keys.ACTIVE_WORKFLOWS))

    async def claim(self, workflow_id: str, node_id: str) -> bool:
        owner = keys.workflow_owner(workflow_id)
        return bool(await self._control.set(owner, node_id, nx=True, px=OWNER_LEASE_MS))

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        owner = [keys.workflow_owner(workflow_id)]
        return bool(int(await self._renew(keys=owner, args=[node_id, OWNER_LEASE_MS])))

    async def disown(self, workflow_id: str, node_id: str) -> None:
        await self._delete_if_ours(keys=[keys.workflow_owner(workflow_id)], args=[node_id])

    async def owner(self, workflow_id: str) -> str | None:
        return _text(await self._control.get(keys.workflow_owner(workflow_id)))

    async def bind_event(self, event_id: str, workflow_id: str) -> str | None:
        key = keys.workflow_of_event(event_id)
        while True:  # again if the binding expired between the two commands
            if await self._control.set(key, workflow_id, nx=True, ex=EVENT_WORKFLOW_SECONDS):
                return None
            bound = _text(await self._control.get(key))
            if bound is not None:
                return bound

    async def rebind_event(self, event_id: str, workflow_id: str, *, replacing: str) -> bool:
        binding = [keys.workflow_of_event(event_id), keys.workflow_record(replacing)]
        args = [replacing, workflow_id, EVENT_WORKFLOW_SECONDS]
        return bool(int(await self._replace_if(keys=binding, args=args)))

    async def unbind_event(self, event_id: str, workflow_id: str) -> None:
        await self._delete_if_ours(keys=[keys.workflow_of_event(event_id)], args=[workflow_id])


class RedisIncidentClaims:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._release = control.register_script(_DELETE_IF_OURS)

    async def claim(self, event_type: str, dedup_key: str, event_id: str, ttl: float) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        return bool(await self._control.set(key, event_id, nx=True, ex=int(ttl)))

    async def holder(self, event_type: str, dedup_key: str) -> str | None:
        return _text(await self._control.get(keys.incident_claim(event_type, dedup_key)))

    async def take_over(
        self, event_type: str, dedup_key: str, held_by: str, event_id: str, ttl: float
    ) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        taken = await self._control.eval(_REPLACE_IF, 1, key, held_by, event_id, int(ttl))
        return bool(taken)

    async def release(self, event_type: str, dedup_key: str, held_by: str) -> bool:
        key = keys.incident_claim(event_type, dedup_key)
        return bool(await self._release(keys=[key], args=[held_by]))

    async def held_for(self, event_type: str, dedup_key: str) -> float | None:
        left = await self._control.ttl(keys.incident_claim(event_type, dedup_key))
        return float(left) if left > 0 else None

    async def mark_recovered(self, event_type: str, dedup_key: str, ttl: float) -> None:
        flag = keys.recovered_flag(keys.incident_claim(event_type, dedup_key))
        await self._control.set(flag, "1", ex=int(ttl))

    async def take_recovered(self, event_type: str, dedup_key: str) -> bool:
        flag = keys.recovered_flag(keys.incident_claim(event_type, dedup_key))
        return bool(await self._control.delete(flag))


_WINDOW_KEYS = {"service_incidents": keys.rate_window, "failing_services": keys.breaker_window}


class RedisSlidingWindows:
    """Each window is a sorted set of members by the time they were last noted, by the Redis
    server's clock (`_RECORD_IN_WINDOW`), so the nodes' clocks do not matter."""

    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._record = control.register_script(_RECORD_IN_WINDOW)
        self._members = control.register_script(_MEMBERS_IN_WINDOW)

    async def record(self, kind: WindowKind, name: str, member: str, window: float) -> int:
        key = _WINDOW_KEYS[kind](name)
        count = await self._record(keys=[key], args=[member, repr(window), int(window) + 60])
        return int(count)

    async def members(self, kind: WindowKind, name: str, window: float) -> list[str]:
        key = _WINDOW_KEYS[kind](name)
        found = await self._members(keys=[key], args=[repr(window)])
        return sorted(m.decode() for m in found)

    async def names(self, kind: WindowKind) -> list[str]:
        prefix = _WINDOW_KEYS[kind]("")
        found = [k.decode() async for k in self._control.scan_iter(match=f"{prefix}*")]
        return sorted(k[len(prefix) :] for k in found)


def _kill_switches(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """The kill switch hash as read: category -> what engaged it."""
    return {category.decode(): json.loads(info) for category, info in raw.items()}


class RedisSafetyFlags:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def engage_kill_switch(self, category: str, info: dict[str, Any]) -> None:
        await self._control.hset(keys.KILLSWITCH, category, json.dumps(info))

    async def release_kill_switch(self, category: str) -> None:
        await self._control.hdel(keys.KILLSWITCH, category)

    async def release_every_kill_switch(self) -> None:
        await self._control.delete(keys.KILLSWITCH)

    async def kill_switches(self) -> dict[str, dict[str, Any]]:
        return _kill_switches(await self._control.hgetall(keys.KILLSWITCH))

    async def set_shadow(self, service: str, shadowed: bool) -> None:
        if shadowed:
            await self._control.sadd(keys.SHADOW_SERVICES, service)
        else:
            await self._control.srem(keys.SHADOW_SERVICES, service)

    async def clear_shadow(self) -> None:
        await self._control.delete(keys.SHADOW_SERVICES)

    async def shadowed(self) -> list[str]:
        return sorted(m.decode() for m in await self._control.smembers(keys.SHADOW_SERVICES))


class RedisSensorRegistry:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def record_heartbeat(self, event: Event) -> None:
        await self._control.hset(keys.SENSORS, event.source, event.to_json())

    async def heartbeat(self, sensor: str) -> Event | None:
        raw = await self._control.hget(keys.SENSORS, sensor)
        return None if raw is None else Event.model_validate_json(raw)

    async def heartbeats(self) -> list[Event]:
        heartbeats = []
        for sensor, value in (await self._control.hgetall(keys.SENSORS)).items():
            try:
                heartbeat = Event.model_validate_json(value)
            except ValueError:
                continue  # one unreadable heartbeat does not hide the others
            if heartbeat.age_seconds() > SENSOR_HEARTBEAT_RETENTION:
                await self._control.hdel(keys.SENSORS, sensor)
            else:
                heartbeats.append(heartbeat)
        return heartbeats


class RedisWatchMarks:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def file_report(self, report: str, node_id: str, ttl: float) -> bool:
        key = keys.watch_reported(report)
        return bool(await self._control.set(key, node_id, nx=True, ex=max(1, int(ttl))))

    async def report_filer(self, report: str) -> str | None:
        return _text(await self._control.get(keys.watch_reported(report)))

    async def withdraw_report(self, report: str) -> None:
        await self._control.delete(keys.watch_reported(report))

    async def flag_unwritable(self, shard: str, node_id: str, ttl: float) -> None:
        await self._control.set(keys.watch_flagged(shard), node_id, ex=max(1, int(ttl)))

    async def unwritable_flagger(self, shard: str) -> str | None:
        return _text(await self._control.get(keys.watch_flagged(shard)))

    async def end_unwritable_episode(self, shard: str, report: str) -> None:
        await self._control.delete(keys.watch_flagged(shard), keys.watch_reported(report))


class RedisServiceMembership:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def members(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(keys.service_members(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}

    async def add(self, service: str, url: str, **info: Any) -> None:
        entry = json.dumps({"added_at": time.time(), **info})
        await self._control.hset(keys.service_members(service), url, entry)

    async def remove(self, service: str, url: str) -> bool:
        return bool(await self._control.hdel(keys.service_members(service), url))

    async def hold_for_forensics(self, service: str, url: str, reason: str) -> None:
        entry = json.dumps({"held_at": time.time(), "reason": reason})
        await self._control.hset(keys.service_forensics(service), url, entry)

    async def forensics(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(keys.service_forensics(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}


class RedisApprovals:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def approve(self, workflow_id: str, step_name: str) -> None:
        key = keys.approval(workflow_id, step_name)
        await self._control.set(key, APPROVED, ex=APPROVAL_SECONDS)

    async def is_approved(self, workflow_id: str, step_name: str) -> bool:
        return await self._control.get(keys.approval(workflow_id, step_name)) == APPROVED


class RedisRunLock:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._renew = control.register_script(_RENEW_IF_OURS)
        self._release = control.register_script(_DELETE_IF_OURS)

    async def take(self, holder: str, ttl: float) -> str | None:
        if await self._control.set(keys.RUN_LOCK, holder, nx=True, px=int(ttl * 1000)):
            return None
        return _text(await self._control.get(keys.RUN_LOCK)) or "?"

    async def renew(self, holder: str, ttl: float) -> bool:
        renewed = await self._renew(keys=[keys.RUN_LOCK], args=[holder, int(ttl * 1000)])
        return bool(int(renewed))

    async def release(self, holder: str) -> None:
        await self._release(keys=[keys.RUN_LOCK], args=[holder])


class RedisChaosSchedules:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def kept(self, name: str) -> str | None:
        return _text(await self._control.get(keys.chaos_schedule(name)))

    async def keep(self, name: str, state_json: str) -> None:
        await self._control.set(keys.chaos_schedule(name), state_json)


class RedisRecordLog:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._append_escalation = control.register_script(_APPEND_ESCALATION_ONCE)

    async def save_audit(self, event_id: str, record_json: str, received_at: float) -> None:
        async with self._control.pipeline(transaction=True) as pipe:
            pipe.set(keys.audit_record(event_id), record_json, ex=AUDIT_RETENTION_SECONDS)
            pipe.zadd(keys.AUDIT_INDEX, {event_id: received_at})
            # The index keeps what the records keep: entries a retention older than this one
            # go, as their records have.
            oldest_kept = received_at - AUDIT_RETENTION_SECONDS
            pipe.zremrangebyscore(keys.AUDIT_INDEX, "-inf", f"({oldest_kept}")
            await pipe.execute()

    async def audit(self, event_id: str) -> str | None:
        return _text(await self._control.get(keys.audit_record(event_id)))

    async def newest_audits(self, since: float | None, count: int) -> list[str]:
        ids = await self._control.zrevrangebyscore(
            keys.AUDIT_INDEX, "+inf", since if since is not None else "-inf", start=0, num=count
        )
        if not ids:
            return []
        raws = await self._control.mget([keys.audit_record(i.decode()) for i in ids])
        return [r.decode() for r in raws if r is not None]

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        await self._append_escalation(
            keys=[keys.ESCALATIONS_STREAM, keys.escalation_appended(event_id)],
            args=[event_id, reason, node_id, AUDIT_RETENTION_SECONDS],
        )

    async def append_shadow_decision(self, decision: dict[str, Any]) -> None:
        await self._control.rpush(keys.SHADOW_DECISIONS, json.dumps(decision))

    async def shadow_decisions(self, limit: int) -> list[dict[str, Any]]:
        return [
            json.loads(e) for e in await self._control.lrange(keys.SHADOW_DECISIONS, -limit, -1)
        ]

    async def write_failures(self) -> dict[str, list[FailureRun]]:
        return await read_write_failures(self._control)


class RedisCoordinationStore:
    """The coordination store on one Redis connection (closed by `aclose` when it owns it)."""

    unavailable: tuple[type[Exception], ...] = (RedisError,)

    def __init__(self, control: aioredis.Redis, *, owns_connection: bool = False) -> None:
        self.control = control
        self._owns_connection = owns_connection
        self.locks = RedisLocks(control)
        self.workflows = RedisWorkflowRecords(control)
        self.incidents = RedisIncidentClaims(control)
        self.windows = RedisSlidingWindows(control)
        self.flags = RedisSafetyFlags(control)
        self.sensors = RedisSensorRegistry(control)
        self.watch = RedisWatchMarks(control)
        self.services = RedisServiceMembership(control)
        self.approvals = RedisApprovals(control)
        self.run_lock = RedisRunLock(control)
        self.schedules = RedisChaosSchedules(control)
        self.records = RedisRecordLog(control)
        self.topology = TopologyStore(control)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0) -> RedisCoordinationStore:
        return cls(aioredis.Redis.from_url(url, socket_timeout=timeout), owns_connection=True)

    async def ping(self) -> bool:
        return bool(await self.control.ping())

    async def step_reads(self) -> StepReads:
        async with self.control.pipeline(transaction=True) as both:
            switches, topology = await both.hgetall(keys.KILLSWITCH).get(TOPOLOGY_KEY).execute()
        return StepReads(
            kill_switches=_kill_switches(switches),
            topology=None if topology is None else Topology.model_validate_json(topology),
        )

    async def aclose(self) -> None:
        if self._owns_connection:
            await self.control.aclose()
