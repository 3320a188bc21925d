"""Specification of `lazarus_lite.held_records`: escalations decided while the record log was
away are written once each, oldest first, whoever calls `write` and however often."""

from __future__ import annotations

import asyncio

from detection.events import new_event
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.decisions import Decisions
from lazarus_lite.held_records import HeldRecords


class SlowRecordLog:
    """A record log that yields to the loop on every call (as a network one does), and can be
    told to refuse the escalations stream."""

    def __init__(self) -> None:
        self.audits: dict[str, str] = {}
        self.escalations: list[str] = []
        self.stream_refuses = False

    async def save_audit(self, event_id: str, raw: str, received_at: float) -> None:
        await asyncio.sleep(0)
        self.audits[event_id] = raw

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        await asyncio.sleep(0)
        if self.stream_refuses:
            raise ConnectionError("the escalations stream is away")
        self.escalations.append(event_id)


def escalation(event_id: str) -> AuditRecord:
    return AuditRecord(
        event_id=event_id,
        event={},
        service="ratequeue",
        received_at=0.0,
        coordinator="n1",
        outcome="escalated",
        reason="store away",
    )


def held(*event_ids: str, limit: int = 1000) -> HeldRecords:
    records = HeldRecords("n1", limit=limit)
    for event_id in event_ids:
        records.hold(escalation(event_id))
    return records


def test_two_concurrent_writers_write_each_record_once_in_order() -> None:
    records, log = held("e0", "e1", "e2"), SlowRecordLog()

    async def both() -> list[int]:
        audit = AuditLog(log)  # type: ignore[arg-type]
        return list(await asyncio.gather(records.write(audit, log), records.write(audit, log)))  # type: ignore[arg-type]

    written = asyncio.run(both())

    assert log.escalations == ["e0", "e1", "e2"]
    assert sorted(written) == [0, 3]
    assert len(records) == 0


def test_records_are_written_oldest_first() -> None:
    records, log = held("e0", "e1", "e2"), SlowRecordLog()

    asyncio.run(records.write(AuditLog(log), log))  # type: ignore[arg-type]

    assert log.escalations == ["e0", "e1", "e2"]


def test_beyond_the_limit_the_oldest_record_is_dropped() -> None:
    records, log = held("e0", "e1", "e2", limit=2), SlowRecordLog()

    asyncio.run(records.write(AuditLog(log), log))  # type: ignore[arg-type]

    assert log.escalations == ["e1", "e2"]


def test_a_record_whose_stream_entry_failed_stays_held_with_its_audit_saved() -> None:
    records, log = held("e0"), SlowRecordLog()
    log.stream_refuses = True

    written = asyncio.run(records.write(AuditLog(log), log))  # type: ignore[arg-type]

    assert (written, len(records), list(log.audits)) == (0, 1, ["e0"])
    log.stream_refuses = False
    assert asyncio.run(records.write(AuditLog(log), log)) == 1  # type: ignore[arg-type]
    assert (log.escalations, len(records)) == (["e0"], 0)


def test_the_nodes_that_each_escalated_an_incident_without_the_store_record_it_once() -> None:
    log = SlowRecordLog()
    incident = "ratequeue/s0/RedisMasterDown/s0-primary@1"

    async def three_nodes() -> None:
        for node in ("n1", "n2", "n3"):
            decisions = Decisions(node, log, AuditLog(log), None, None)  # type: ignore[arg-type]
            event = new_event("RedisMasterDown", environment="dev", region="local",
                              service="ratequeue", host="127.0.0.1:7000", source=f"lazarus:{node}",
                              shard="s0", incident_key=incident)  # fmt: skip
            await decisions.escalate_without_store(event, "store away")

    asyncio.run(three_nodes())

    # One audit record, and one record id for the stream (which appends an id once).
    assert (len(log.audits), len(set(log.escalations))) == (1, 1)
