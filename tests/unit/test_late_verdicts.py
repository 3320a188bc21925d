"""Specification of `Decisions.late_verdicts`: the verdicts of the nodes a quorum round did not
wait for reach the decided audit record as a note, and leave the decision as it was made."""

from __future__ import annotations

import asyncio

from detection.events import new_event
from lazarus_lite.audit import AuditLog, NodeVerdict
from lazarus_lite.decisions import Decisions
from lazarus_lite.held_records import HeldRecordLog


class RecordLogInMemory:
    """The part of a record log the audit trail uses, kept in a dict."""

    def __init__(self) -> None:
        self.audits: dict[str, str] = {}

    async def save_audit(self, event_id: str, raw: str, received_at: float) -> None:
        self.audits[event_id] = raw

    async def audit(self, event_id: str) -> str | None:
        return self.audits.get(event_id)


def test_late_verdicts_are_noted_on_the_decided_record_without_changing_the_decision() -> None:
    log = HeldRecordLog(RecordLogInMemory(), "n1")  # type: ignore[arg-type]
    audit = AuditLog(log)
    decisions = Decisions("n1", log, audit, None, None)  # type: ignore[arg-type]
    event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                      shard="s0", host="h:1", source="test")  # fmt: skip
    late = NodeVerdict(node="http://n3:1", passed=False, seconds=0.3, answered_after=0.4)

    async def decide_then_hear_late() -> None:
        record = await decisions.open(event)
        record.outcome, record.reason = "scheduled", "quorum reached"
        await audit.save(record)
        await decisions.late_verdicts(event.id, [late])

    asyncio.run(decide_then_hear_late())
    record = asyncio.run(audit.get(event.id))
    assert record is not None and (record.outcome, record.reason) == ("scheduled", "quorum reached")
    [note] = record.notes
    assert note.kind == "late_verdicts"
    assert [NodeVerdict.model_validate(v) for v in note.data["verdicts"]] == [late]


def test_late_verdicts_of_an_event_without_a_record_are_dropped() -> None:
    log = RecordLogInMemory()
    records = HeldRecordLog(log, "n1")  # type: ignore[arg-type]
    decisions = Decisions("n1", records, AuditLog(records), None, None)  # type: ignore[arg-type]
    verdict = NodeVerdict(node="http://n3:1", passed=True)
    asyncio.run(decisions.late_verdicts("no-such-event", [verdict]))
    assert log.audits == {}
