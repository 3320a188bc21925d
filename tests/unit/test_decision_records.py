"""Specification of how `Decisions` saves a decision's record: a refusal is saved before its
person is paged (a report waiting on the decision learns it at once, not after the pager's
retries), an escalation that did not go out after the save goes out when the event is handled
again, and a workflow's end is recorded with the time it ended."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from detection.events import new_event
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.decisions import Decisions
from lazarus_lite.held_records import HeldRecordLog
from lazarus_lite.paging import PageState


class RecordLogInMemory:
    """The record log's audit trail and escalations stream, kept in memory; each escalation is
    kept with the outcome its event's saved record had when it was appended."""

    def __init__(self, failing_appends: int = 0, failure: BaseException | None = None) -> None:
        self.audits: dict[str, str] = {}
        self.escalations: list[tuple[str, str]] = []
        self.failing_appends = failing_appends
        self.failure = failure or ConnectionError("the record log did not answer")

    async def save_audit(self, event_id: str, raw: str, received_at: float) -> None:
        self.audits[event_id] = raw

    async def audit(self, event_id: str) -> str | None:
        return self.audits.get(event_id)

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        if self.failing_appends:
            self.failing_appends -= 1
            raise self.failure
        saved = AuditRecord.model_validate_json(self.audits[event_id])
        self.escalations.append((event_id, saved.outcome))


class ClaimsKeepingNothing:
    async def forget_if_recovered(self, record: AuditRecord) -> None:
        return None


def decisions_on(log: RecordLogInMemory) -> Decisions:
    records = HeldRecordLog(log, "n1")  # type: ignore[arg-type]
    return Decisions("n1", records, AuditLog(records), ClaimsKeepingNothing(), None)  # type: ignore[arg-type]


async def refused(decisions: Decisions) -> AuditRecord:
    event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                      shard="s0", host="h:1", source="test")  # fmt: skip
    record = await decisions.open(event)
    return await decisions.escalate(record, "quorum not reached")


def test_a_refusal_is_saved_before_its_escalation_goes_out() -> None:
    log = RecordLogInMemory()
    record = asyncio.run(refused(decisions_on(log)))
    assert log.escalations == [(record.event_id, "escalated")]


def test_an_escalation_cut_short_after_its_refusal_was_saved_goes_out_once_on_redelivery() -> None:
    # The node stops (its task cancelled) between saving the refusal and appending the escalation.
    log = RecordLogInMemory(failing_appends=1, failure=asyncio.CancelledError())
    decisions = decisions_on(log)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(refused(decisions))
    [event_id] = log.audits
    saved = asyncio.run(decisions.audit.get(event_id))
    assert saved is not None and saved.outcome == "escalated" and log.escalations == []
    for _ in range(2):  # the event handed out again, twice
        again = asyncio.run(decisions.audit.get(event_id))
        assert again is not None
        asyncio.run(decisions.finish_escalation(again))
    assert log.escalations == [(event_id, "escalated")]


def test_an_escalation_the_record_log_refused_is_held_then_appended_once() -> None:
    log = RecordLogInMemory(failing_appends=1)
    decisions = decisions_on(log)
    record = asyncio.run(refused(decisions))  # not raised: held
    assert log.escalations == [] and decisions.records.held_events == [record.event_id]
    again = asyncio.run(decisions.audit.get(record.event_id))  # handed out again meanwhile
    assert again is not None
    asyncio.run(decisions.finish_escalation(again))

    asyncio.run(decisions.write_held())

    assert log.escalations == [(record.event_id, "escalated")]
    assert len(decisions.records) == 0


def test_a_failed_workflow_is_recorded_with_the_time_it_ended() -> None:
    log = RecordLogInMemory()
    decisions = decisions_on(log)

    async def schedule_then_fail() -> AuditRecord | None:
        event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                          shard="s0", host="h:1", source="test")  # fmt: skip
        record = await decisions.open(event)
        await decisions.scheduled(record, event, "wf-1")
        workflow = SimpleNamespace(id="wf-1", event_id=event.id, status="escalated",
                                   escalation="promotion failed", finished_at=1_000.0)  # fmt: skip
        await decisions.workflow_finished(workflow)  # type: ignore[arg-type]
        return await decisions.audit.get(event.id)

    record = asyncio.run(schedule_then_fail())
    assert record is not None and record.outcome == "escalated"
    assert record.workflow_ended_at == 1_000.0 and record.decided_at != 1_000.0


class RecordLogPagingSlowly(RecordLogInMemory):
    """Its escalation appends wait until `go` is set (a pager's retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.paging = asyncio.Event()
        self.go = asyncio.Event()

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        self.paging.set()
        await self.go.wait()
        await super().append_escalation(event_id, reason, node_id)


def test_a_page_deadline_noted_while_the_refusal_is_paged_is_kept() -> None:
    async def scenario() -> AuditRecord | None:
        log = RecordLogPagingSlowly()
        decisions = decisions_on(log)
        event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                          shard="s0", host="h:1", source="test")  # fmt: skip
        decisions._event_of_incident[event.dedup_key] = event.id  # as track_page with a pager
        record = await decisions.open(event)
        refusing = asyncio.create_task(decisions.escalate(record, "quorum not reached"))
        await log.paging.wait()
        page = PageState(incident_key=event.dedup_key, service="ratequeue", summary="down",
                         triggered_at=0, deadline_at=1, reason="not acknowledged")  # fmt: skip
        await decisions.page_deadline_passed(page, [])
        log.go.set()
        await refusing
        return await decisions.audit.get(event.id)

    saved = asyncio.run(scenario())
    assert saved is not None
    assert {"page_deadline", "escalation"} <= {note.kind for note in saved.notes}
