"""One incident, one decision: the coordinator's claim on an incident in the control store, so
that several sensors reporting the same failure make one decision, with the two ways a claim
ends early (a declined incident reported again is decided afresh; a recovery releases it).

Not for: deciding the incident (`controller`) or the watch's own reports (`shard_watch`).
"""

from __future__ import annotations

import contextlib
import time

import redis.asyncio as aioredis

from detection.events import Event
from lazarus_lite import control_keys
from lazarus_lite.audit import AuditLog, AuditRecord

# Outcomes that took no action: the incident may be claimed again once its failure recovers.
UNACTED = {"escalated", "duplicate", "no_action", "stale"}


def incident_claim_key(event: Event) -> str:
    return control_keys.incident_claim(event.type, event.dedup_key)


class IncidentClaims:
    """Claims on incidents, held `ttl` seconds; a declined one is retaken after `retry_after`."""

    def __init__(
        self, control: aioredis.Redis, audit: AuditLog, *, ttl: float, retry_after: float
    ) -> None:
        self.control = control
        self.audit = audit
        self.ttl = ttl
        self.retry_after = retry_after

    async def claim(self, event: Event) -> str | None:
        """Claim the event's incident; None when this event holds it now, else the id of the
        event that holds it (this one is its duplicate)."""
        key = incident_claim_key(event)
        if await self.control.set(key, event.id, nx=True, ex=int(self.ttl)):
            return None
        first = await self.control.get(key)
        first_id = first.decode() if first else "?"
        if first_id == event.id or await self._take_over_declined(event, first_id):
            return None
        return first_id

    async def _take_over_declined(self, event: Event, first_id: str) -> bool:
        """A later report of an incident whose first report was declined (escalated, stopped by
        a gate) more than `incident_retry_seconds` ago is decided afresh: the sensors report a
        primary that stays down again, and conditions (a raced check, a closed gate) change."""
        first = await self.audit.get(first_id)
        if first is None or first.outcome not in {"escalated", "no_action"}:
            return False
        if time.time() - (first.decided_at or time.time()) < self.retry_after:
            return False
        key = incident_claim_key(event)
        taken = await self.control.set(key, event.id, xx=True, ex=int(self.ttl))
        return bool(taken)

    async def release_on_recovery(self, event: Event) -> None:
        """A recovery ends the incident: a later failure of the same primary is a new one. If
        the failure is still being decided, it is released as soon as that decision is made
        without action (otherwise a real failure right after a false alarm would be dropped
        as its duplicate)."""
        if not event.incident_key:
            return
        key = control_keys.incident_claim("RedisMasterDown", event.incident_key)
        with contextlib.suppress(Exception):
            first = await self.control.get(key)
            if first is None:
                return
            down = await self.audit.get(first.decode())
            if down is None or down.outcome in UNACTED:
                await self.control.delete(key)
            elif down.outcome == "received":
                await self.control.set(control_keys.recovered_flag(key), "1", ex=int(self.ttl))

    async def forget_if_recovered(self, record: AuditRecord) -> None:
        """After a decision without action: drop the claim if the failure recovered meanwhile."""
        if record.outcome not in UNACTED:
            return
        key = incident_claim_key(Event.model_validate(record.event))
        if await self.control.delete(control_keys.recovered_flag(key)):
            await self.control.delete(key)
