"""One incident, one decision: the coordinator's claim on an incident in the coordination store, so
that several sensors reporting the same failure make one decision, and the ways a claim ends
early (a refused incident absorbs no later report; a recovery releases it).

Which later report of an incident is merged into the claim's decision, and which is decided on
its own (`merge_verdict`, pure):
- the claim's decision is still being made: the report waits for it (at most `decision_wait`),
  then is judged by that decision's outcome, as below; a decision not made by then raises
  `DecisionPending`: the report is published again (its copy acknowledged) and judged when
  the stream hands it out (merging it would swallow a real failure behind a slow refusal);
  a claim whose record cannot be read (its node holds it while the record log is away, or
  died before writing it) counts as undecided, aged from when the claim was taken;
  once the claim's record has stayed undecided for `abandoned_after` seconds (its coordinator
  died, or lost the event), the report takes the claim over (compare-and-set) and is decided
  on its own instead of waiting again (a holder that was only slow finds its claim taken
  before it acts, `taken_over_by`, and is decided a duplicate);
- the decision acted (a workflow was scheduled or remediated the failure): a duplicate, so one
  failure is failed over once;
- the decision refused to act without running anything (quorum not reached, a gate, no rule):
  the report is decided on its own, with its own quorum and gates. A refusal judged the world as
  its checks saw it; a report that came after them may be the real failure a false alarm came
  just before (staging soak run B: a heartbeat timed out 0.17 s before a real kill, the kill's
  reports were merged into the refused false alarm, and nothing failed the shard over);
- a workflow ran and failed: decided afresh once `retry_after` has passed since it ended (a
  failover that just failed is not re-run on the next report at once).

Not for: deciding the incident (`controller`) or the watch's own reports (`shard_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Literal

from detection.events import Event
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.coordination.interface import IncidentClaimStore
from lazarus_lite.errors import DecisionPending

# Outcomes that took no action: the incident may be claimed again once its failure recovers.
UNACTED = {"escalated", "duplicate", "no_action", "stale"}
# How often a report waiting on an undecided claim looks at its decision again.
DECISION_POLL = 0.05

MergeVerdict = Literal["wait", "merge", "decide_afresh"]


def merge_verdict(holder: AuditRecord | None, now: float, retry_after: float) -> MergeVerdict:
    """What a later report of an incident does with the decision that holds its claim."""
    if holder is None or holder.outcome == "received":
        # Not decided yet, or decided where the log has not seen it (its node holds the record
        # while the log is away; it never wrote one): records outlive claims by weeks, so a
        # missing one is not an expired decision. Merging would swallow a real failure.
        return "wait"
    if holder.outcome in {"escalated", "no_action"} and holder.workflow_id is None:
        return "decide_afresh"  # refused without acting: it absorbs nothing
    # A failed workflow's retry delay runs from its end, not from when it was scheduled (a
    # failover that ran for longer than the delay is not re-run at once).
    failed_at = holder.workflow_ended_at or holder.decided_at or now
    if holder.outcome == "escalated" and now - failed_at >= retry_after:
        return "decide_afresh"  # its workflow failed a while ago: try again
    return "merge"


@dataclass(frozen=True)
class Claim:
    """How an event stands to its incident: it decides it (`duplicate_of` None), having taken
    the claim from a refused decision (`took_over_from`) or not; or it is a duplicate."""

    duplicate_of: str | None = None
    took_over_from: str | None = None
    abandoned: bool = False  # took it from a decision never made, not from a refusal
    waited: float = field(default=0.0, compare=False)  # seconds waiting on the holder


class IncidentClaims:
    """Claims on incidents, held `ttl` seconds; see the module docstring for what is merged."""

    def __init__(
        self,
        claims: IncidentClaimStore,
        audit: AuditLog,
        *,
        ttl: float,
        retry_after: float,
        decision_wait: float = 6.0,
        abandoned_after: float = float("inf"),
    ) -> None:
        self.claims = claims
        self.audit = audit
        self.ttl = ttl
        self.retry_after = retry_after
        self.decision_wait = decision_wait
        self.abandoned_after = abandoned_after

    async def claim(self, event: Event) -> Claim:
        """Claim the event's incident, or say which event's decision it is a duplicate of."""
        kind, key = event.type, event.dedup_key
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            if await self.claims.claim(kind, key, event.id, self.ttl):
                return Claim(waited=waited)
            holder_id = await self.claims.holder(kind, key)
            if holder_id is None:
                continue  # released or expired in between: claim it again
            if holder_id == event.id:
                return Claim(waited=waited)  # this event's own claim (handled again)
            holder = await self.audit.get(holder_id)
            verdict = merge_verdict(holder, time.time(), self.retry_after)
            if verdict == "wait" and waited < self.decision_wait:
                await asyncio.sleep(DECISION_POLL)
                continue
            abandoned = (
                verdict == "wait"
                and await self._undecided_for(holder, kind, key) >= self.abandoned_after
            )
            if verdict == "decide_afresh" or abandoned:
                if await self.claims.take_over(kind, key, holder_id, event.id, self.ttl):
                    # A recovery of the earlier report's failure is not this report's.
                    await self.claims.take_recovered(kind, key)
                    return Claim(took_over_from=holder_id, abandoned=abandoned, waited=waited)
                continue  # another report took it first: judge against its decision
            if verdict == "wait":
                # Merging it could swallow a real failure behind a slow refusal; its
                # coordinator may also have died (the stream hands that event out again).
                raise DecisionPending(
                    f"event {event.id}: event {holder_id} holding its incident is still "
                    f"undecided after {waited:.1f} s; published again to be judged later"
                )
            return Claim(duplicate_of=holder_id, waited=waited)

    async def _undecided_for(self, holder: AuditRecord | None, kind: str, key: str) -> float:
        """How long the claim's decision has gone unmade: since its record was received, or,
        with no record to read, since the claim was taken (its age, from the time it has left:
        every node takes claims for the same `incident_ttl`; on etcd a new leader may renew a
        lease in full, so an election can make the claim look younger: later, never sooner)."""
        if holder is not None:
            return time.time() - holder.received_at
        left = await self.claims.held_for(kind, key)
        return 0.0 if left is None else self.ttl - left

    async def taken_over_by(self, event: Event) -> str | None:
        """The event that took this event's claim over while it was being decided (a slow
        decision looks abandoned past `abandoned_after`), or None while it still holds it."""
        holder = await self.claims.holder(event.type, event.dedup_key)
        return holder if holder not in (None, event.id) else None

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
            if down is not None and down.outcome in UNACTED:
                await self.claims.release(*incident, held_by=first)
            elif down is None or down.outcome == "received":
                # Undecided, or decided where this node cannot read it (held on its node while
                # the record log is away): releasing could free a decision that acted.
                await self.claims.mark_recovered(*incident, self.ttl)

    async def forget_if_recovered(self, record: AuditRecord) -> None:
        """After a decision without action: drop the claim if the failure recovered meanwhile,
        and only while this record's event holds it (a report that took it over meanwhile
        decides on; dropping its claim would let a third report decide too)."""
        if record.outcome not in UNACTED:
            return
        event = Event.model_validate(record.event)
        incident = (event.type, event.dedup_key)
        if await self.claims.holder(*incident) != record.event_id:
            return  # a duplicate, or its claim was taken over: the mark is not its to take
        if await self.claims.take_recovered(*incident):
            await self.claims.release(*incident, held_by=record.event_id)
