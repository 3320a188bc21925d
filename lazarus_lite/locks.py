"""Resource locks in the control store (`host`, `service`, `shard`), with a TTL and a fencing
token: every step that changes state checks the lock is still held with its token, so a workflow
that lost its lock (expired, taken over) cannot act.

The holder is a workflow id, not a node: a node that resumes another node's workflow continues
under the same lock and token. Not for: choosing what to lock (the rule's `lock` field does).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from lazarus_lite import control_keys
from lazarus_lite.errors import LockBusy, LockLost

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
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class HeldLock:
    key: str
    holder: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.holder}|{self.token}"


class Locks:
    def __init__(self, control: aioredis.Redis, ttl_ms: int = 60_000) -> None:
        self._control = control
        self.ttl_ms = ttl_ms
        self._acquire = control.register_script(_ACQUIRE)
        self._renew = control.register_script(_RENEW)
        self._release = control.register_script(_RELEASE)

    async def acquire(self, kind: str, resource: str, holder: str) -> HeldLock:
        key = control_keys.lock(kind, resource)
        token = int(
            await self._acquire(keys=[key, control_keys.LOCK_TOKENS], args=[holder, self.ttl_ms])
        )
        if token < 0:
            current = await self._control.get(key)
            raise LockBusy(f"{key} is held by {current.decode() if current else 'someone'}")
        return HeldLock(key, holder, token)

    async def assert_held(self, lock: HeldLock) -> None:
        """Raise LockLost unless `lock` is still held with its token (renewing its TTL)."""
        if not int(await self._renew(keys=[lock.key], args=[lock.value, self.ttl_ms])):
            raise LockLost(f"{lock.key} is no longer held by {lock.holder} with token {lock.token}")

    async def renew(self, lock: HeldLock) -> bool:
        return bool(int(await self._renew(keys=[lock.key], args=[lock.value, self.ttl_ms])))

    async def release(self, lock: HeldLock) -> bool:
        return bool(int(await self._release(keys=[lock.key], args=[lock.value])))

    async def holder(self, kind: str, resource: str) -> str | None:
        value = await self._control.get(control_keys.lock(kind, resource))
        return value.decode() if value else None
