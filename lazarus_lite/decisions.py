"""How a decision leaves the controller: written to the audit trail as it is made, and, when it
hands the event to a person, put on the escalations stream and sent through the pager; also the
ends of a decision that come later (the workflow finished, the page's deadline passed, the
verdicts of the nodes the quorum round did not wait for), and the
escalations made while the coordination store is unreachable (paged at once, since the channels
do not need the store). Every record goes through the node's `HeldRecordLog`: while the log is
away it is held and written once the log answers (see `held_records`), so no decision waits on
it.
Paging is at least once: a refusal is saved before its person is paged, and the page is noted
after it is sent, so a node stopping in between has the page sent again on redelivery.

Not for: making the decision (`controller`) or the pager policy itself (`paging`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from detection.events import Event
from lazarus_lite.audit import AuditLog, AuditRecord, NodeVerdict, note_deliveries
from lazarus_lite.gates import GateStop
from lazarus_lite.held_records import HeldRecordLog
from lazarus_lite.incidents import IncidentClaims
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.paging import Pager, PageState
from lazarus_lite.shard_keeper import RATEQUEUE_SERVICE
from lazarus_lite.workflow.records import WorkflowRecord
from notifications.config import NotificationConfig
from notifications.delivery import Delivery

# The note a refusal is saved with before its person is paged (`Decisions.finish_escalation`).
ESCALATION_DUE = "escalation_due"

log = logging.getLogger(__name__)


def store_away_record_id(event: Event) -> str:
    """The record id of an escalation made without the store: one per incident (its key names
    the primary and epoch), whichever node made it and from whichever event, so the nodes that
    each escalated it save one record, not one each."""
    return "store-away:" + event.dedup_key.replace("/", ":")


def _incident_key(record: AuditRecord) -> str:
    return Event.model_validate(record.event).dedup_key


class Decisions:
    """Records this node's decisions and tells people of the ones they must take over. `audit`
    reads and writes through `records`, so a record held while the log is away reads back."""

    def __init__(
        self,
        node_id: str,
        records: HeldRecordLog,
        audit: AuditLog,
        incidents: IncidentClaims,
        notifications: NotificationConfig | None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics or ControllerMetrics()
        self.records = records
        self.audit = audit
        self.incidents = incidents
        # Without a notification config nobody is paged: decisions still reach the audit trail
        # and the escalations stream.
        self.pager = (
            Pager(notifications, on_deadline=self.page_deadline_passed)
            if notifications is not None
            else None
        )
        self._event_of_incident: dict[str, str] = {}
        # One read-modify-write of a record at a time on this node (a page's deadline note and
        # a late escalation's note would otherwise overwrite each other).
        # Weak: a record's lock is gone once no amendment of it holds or awaits it.
        self._amending: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def aclose(self) -> None:
        if self.pager is not None:
            await self.pager.aclose()

    async def open(self, event: Event) -> AuditRecord:
        """The event's record as received (saved before anything is decided)."""
        record = AuditRecord(
            event_id=event.id,
            event=event.model_dump(mode="json"),
            service=event.service,
            received_at=time.time(),
            coordinator=self.node_id,
        )
        await self.audit.save(record)
        return record

    def track_page(self, event: Event) -> None:
        """The sensor paged; its acknowledgement deadline runs from when it saw the failure."""
        if self.pager is None:
            return
        self.pager.track(
            event.dedup_key,
            event.service,
            triggered_at=event.occurred_at,
            summary=f"{event.type} {event.service}/{event.shard} {event.host}",
            event_id=event.id,
        )
        self._event_of_incident[event.dedup_key] = event.id

    async def decide(self, record: AuditRecord, outcome: Any, reason: str) -> AuditRecord:
        record.outcome, record.reason, record.decided_at = outcome, reason, time.time()
        # Counted before the record is saved, so whoever reads the decision in the audit trail
        # finds it counted (a save that fails has the event decided, and counted, again).
        self.metrics.decided(outcome)
        if record.gate is not None:  # stale, shadow, and every gate before the action
            self.metrics.gate_stopped(record.gate)
        await self.audit.save(record)
        await self.incidents.forget_if_recovered(record)
        log.info("%s: event %s %s: %s", self.node_id, record.event_id, outcome, reason)
        return record

    async def escalate(self, record: AuditRecord, reason: str) -> AuditRecord:
        return await self._refused(record, "escalated", reason)

    async def stopped_by_gate(self, record: AuditRecord, stop: GateStop) -> AuditRecord:
        """A gate stopped the action: NO_ACTION, and a person gets the event."""
        record.gate = stop.gate
        return await self._refused(record, "no_action", stop.reason)

    async def _refused(self, record: AuditRecord, outcome: Any, reason: str) -> AuditRecord:
        """A refusal is saved before a person is paged: a later report of the incident waiting
        on this decision is judged by it at once, not after the pager's retries (~10 s)."""
        record.note(ESCALATION_DUE, reason)
        await self.decide(record, outcome, reason)
        await self.finish_escalation(record)
        return record

    async def finish_escalation(self, record: AuditRecord) -> None:
        """Page the person a saved refusal is due to, unless it was done (a redelivered event
        whose node stopped, or whose store failed, between saving the refusal and paging).
        At least once: a node that stops after paging and before saving the escalation's note
        pages again when the event is handed out again."""
        kinds = {note.kind for note in record.notes}
        if ESCALATION_DUE not in kinds or "escalation" in kinds:
            return
        due = next(note for note in record.notes if note.kind == ESCALATION_DUE)
        before = len(record.notes)
        await self.notify_escalation(record, due.detail)
        added = record.notes[before:]  # the escalation's note and deliveries
        await self._amend(record, lambda saved: saved.notes.extend(added))

    async def _amend(self, record: AuditRecord, change: Callable[[AuditRecord], Any]) -> None:
        """Save `change` made to the record as saved now, one amendment of a record at a time
        on this node. `record`, this node's copy, carries the change already: it is saved as
        it is if no record is saved (the change is not made twice)."""
        lock = self._amending.setdefault(record.event_id, asyncio.Lock())
        async with lock:
            saved = await self.audit.get(record.event_id)
            if saved is None:
                saved = record
            else:
                change(saved)
            await self.audit.save(saved)

    async def scheduled(self, record: AuditRecord, event: Event, workflow_id: str) -> AuditRecord:
        """The workflow runs: the controller takes the page (acknowledges it)."""
        record.workflow_id = workflow_id
        if self.pager is not None:
            note_deliveries(record, await self.pager.acknowledge(event.dedup_key, event.service))
        return await self.decide(record, "scheduled", f"quorum reached; {workflow_id} runs")

    async def notify_escalation(self, record: AuditRecord, reason: str) -> None:
        await self.records.append_escalation(record.event_id, reason, self.node_id)
        self.metrics.escalations_published.inc()
        record.note("escalation", reason)
        log.warning("%s: event %s escalated: %s", self.node_id, record.event_id, reason)
        if self.pager is not None:
            incident = _incident_key(record)
            note_deliveries(record, await self.pager.escalate(incident, record.service, reason))

    # -- later ends of a decision ----------------------------------------------------------
    async def workflow_finished(self, workflow: WorkflowRecord) -> None:
        if workflow.event_id is None:
            return
        record = await self.audit.get(workflow.event_id)
        if record is None:
            return
        before = len(record.notes)
        if workflow.status == "succeeded":
            outcome, reason = "remediated", f"workflow {workflow.id} succeeded"
            if self.pager is not None:
                note_deliveries(
                    record,
                    await self.pager.resolve(
                        _incident_key(record), record.service, f"remediated by {workflow.id}"
                    ),
                )
        else:
            outcome, reason = "escalated", f"workflow {workflow.id}: {workflow.escalation}"
            await self.notify_escalation(record, reason)
        record.note("workflow", f"{workflow.id} {workflow.status}", node=self.node_id)
        added = record.notes[before:]  # deliveries, escalation, the workflow's end
        ended_at = workflow.finished_at or time.time()

        def finished(saved: AuditRecord) -> None:
            saved.outcome, saved.reason = outcome, reason  # type: ignore[assignment]
            saved.workflow_ended_at = ended_at
            saved.notes.extend(added)

        del record.notes[before:]  # made again by `finished`, as on the record saved now
        finished(record)
        # The decision's later end (counted before it is saved, as decide() does); the event's
        # decision itself was counted when the workflow was scheduled.
        self.metrics.workflow_ended(outcome)
        await self._amend(record, finished)

    async def late_verdicts(self, event_id: str, verdicts: list[NodeVerdict]) -> None:
        """The verdicts of the nodes the quorum round did not wait for, added to the decided
        record as a note (kind `late_verdicts`): the decision stands as made."""
        record = await self.audit.get(event_id)
        if record is None:
            return
        passed = [v.node for v in verdicts if v.passed]

        def noted(saved: AuditRecord) -> None:
            saved.note(
                "late_verdicts",
                f"{len(verdicts)} node(s) answered after the decision; passed: {passed or 'none'}",
                verdicts=[v.model_dump(mode="json") for v in verdicts],
            )

        noted(record)
        await self._amend(record, noted)

    async def page_deadline_passed(self, page: PageState, deliveries: list[Delivery]) -> None:
        """The acknowledgement deadline passed with the page still held: it went to a person."""
        event_id = self._event_of_incident.get(page.incident_key)
        record = await self.audit.get(event_id) if event_id else None
        if record is not None:

            def held_past_deadline(saved: AuditRecord) -> None:
                saved.note(
                    "page_deadline", f"page held past its deadline: escalated ({page.reason})"
                )
                note_deliveries(saved, deliveries)

            held_past_deadline(record)
            await self._amend(record, held_past_deadline)

    async def escalate_without_store(self, event: Event, reason: str) -> AuditRecord:
        """No controller can act on `event` (the store that grants locks is unreachable): a
        person is paged now, under the incident's own key (the sensors' page, re-triggered
        with the reason), and the decision is recorded as soon as the record log takes it, under
        the incident's record id (`store_away_record_id`: the nodes share one record)."""
        now = time.time()
        record = AuditRecord(
            event_id=store_away_record_id(event),
            event=event.model_dump(mode="json"),
            service=event.service,
            received_at=now,
            coordinator=self.node_id,
            outcome="escalated",
            reason=reason,
            decided_at=now,
        )
        record.note("escalation", reason)
        record.note("store_unreachable", "decided while the coordination store was unreachable; "
                    "written to the trail once it answered")  # fmt: skip
        log.error("%s: event %s escalated: %s", self.node_id, event.id, reason)
        if self.pager is not None:
            self.track_page(event)
            note_deliveries(
                record, await self.pager.escalate(event.dedup_key, event.service, reason)
            )
        # On etcd the record log is in Redis, which may well answer; one that does not is
        # written behind (`held_records`), not waited for by the watch pass that called.
        await self.audit.save(record)
        await self.records.append_escalation(record.event_id, reason, self.node_id)
        return record

    async def write_held(self) -> int:
        """Write what was held while the record log was unreachable (see `held_records`);
        returns how many writes were written."""
        return await self.records.write_held()

    async def watch_blind(self, reason: str) -> None:
        """This node cannot watch the shards (nor file a report): tell a person directly."""
        log.error("%s: %s", self.node_id, reason)
        if self.pager is not None:
            await self.pager.escalate(f"lazarus/{self.node_id}/blind", RATEQUEUE_SERVICE, reason)
