"""Persistence of workflow runs in the control store, and the owner's lease: a record is saved
only while the saving node still owns the workflow. Not for: running steps (see `engine`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from lazarus_lite import control_keys
from lazarus_lite.errors import OwnershipLost
from lazarus_lite.workflow.records import WorkflowRecord

OWNER_LEASE_MS = 3000


# Save only while the lease is ours: a node that lost its workflow cannot overwrite the new
# owner's record.
_SAVE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
if ARGV[3] == '1' then redis.call('SADD', KEYS[3], ARGV[5])
else redis.call('SREM', KEYS[3], ARGV[5]) end
return 1
"""
_RENEW_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_DISOWN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WorkflowStore:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._save = control.register_script(_SAVE)
        self._renew = control.register_script(_RENEW_OWNER)
        self._disown = control.register_script(_DISOWN)

    async def save(
        self,
        record: WorkflowRecord,
        entry: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Write the record (and a history entry) in one step; with `owner`, only while that
        node still holds the workflow's lease (else OwnershipLost: another node took over)."""
        written = await self._save(
            keys=[
                control_keys.workflow_record(record.id),
                control_keys.workflow_history(record.id),
                control_keys.ACTIVE_WORKFLOWS,
                control_keys.workflow_owner(record.id),
            ],
            args=[
                record.model_dump_json(),
                _json({"at": time.time(), **entry}) if entry is not None else "",
                "1" if record.status == "running" else "0",
                owner or "",
                record.id,
            ],
        )
        if not int(written):
            raise OwnershipLost(f"{owner} no longer owns workflow {record.id}; not saved")

    async def load(self, workflow_id: str) -> WorkflowRecord | None:
        raw = await self._control.get(control_keys.workflow_record(workflow_id))
        return None if raw is None else WorkflowRecord.model_validate_json(raw)

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(e)
            for e in await self._control.lrange(control_keys.workflow_history(workflow_id), 0, -1)
        ]

    async def active(self) -> list[str]:
        return sorted(
            m.decode() for m in await self._control.smembers(control_keys.ACTIVE_WORKFLOWS)
        )

    async def claim(self, workflow_id: str, node_id: str) -> bool:
        return bool(
            await self._control.set(
                control_keys.workflow_owner(workflow_id), node_id, nx=True, px=OWNER_LEASE_MS
            )
        )

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        keys = [control_keys.workflow_owner(workflow_id)]
        return bool(int(await self._renew(keys=keys, args=[node_id, OWNER_LEASE_MS])))

    async def disown(self, workflow_id: str, node_id: str) -> None:
        await self._disown(keys=[control_keys.workflow_owner(workflow_id)], args=[node_id])


def _json(value: Any) -> str:
    return json.dumps(value, default=str)
