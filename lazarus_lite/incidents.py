"""One incident, one decision: the coordinator's claim on an incident in the coordination store, so
that several sensors reporting the same failure make one decision, with the two ways a claim
ends early (a declined incident reported again is decided afresh; a recovery releases it).

Not for: deciding the incident (`controller`) or the watch's own reports (`shard_watch`).
"""

from __future__ import annotations

import contextlib
import time

from detection.events import Event
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.coordination.interface import IncidentClaimStore

# Outcomes that took no action: the incident may be claimed again once its failure recovers.
UNACTED = {"escalated", "duplicate", "no_action", "stale"}


class IncidentClaims:
    """Claims on incidents, held `ttl` seconds; a declined one is retaken after `retry_after`."""

    def __init__(
        self, claims: IncidentClaimStore, audit: AuditLog, *, ttl: float, retry_after: float
    ) -> None:
        self.claims = claims
        self.audit = audit
        self.ttl = ttl
        self.retry_after = retry_after

    async def claim(self, event: Event) -> str | None:
        """Claim the event's incident; None when this event holds it now, else the id of the
        event that holds it (this one is its duplicate)."""
        if await self.claims.claim(event.type, event.dedup_key, event.id, self.ttl):
            return None
        first_id = await self.claims.holder(event.type, event.dedup_key) or "?"
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
        return await self.claims.take_over(event.type, event.dedup_key, event.id, self.ttl)

    async def release_on_recovery(self, event: Event) -> None:
        """A recovery ends the incident: a later failure of the same primary is a new one. If
        the failure is still being decided, it is released as soon as that decision is made
        without action (otherwise a real failure right after a false alarm would be dropped
        as its duplicate)."""
        if not event.incident_key:
            return
        incident = ("RedisMasterDown", event.incident_key)
        with contextlib.suppress(Exception):
            first = await self.claims.holder(*incident)
            if first is None:
                return
            down = await self.audit.get(first)
            if down is None or down.outcome in UNACTED:
                await self.claims.release(*incident)
            elif down.outcome == "received":
                await self.claims.mark_recovered(*incident, self.ttl)

    async def forget_if_recovered(self, record: AuditRecord) -> None:
        """After a decision without action: drop the claim if the failure recovered meanwhile."""
        if record.outcome not in UNACTED:
            return
        event = Event.model_validate(record.event)
        if await self.claims.take_recovered(event.type, event.dedup_key):
            await self.claims.release(event.type, event.dedup_key)
