"""Specification of `lazarus_lite.held_records`: while the record log is away a node's writes
are held, in order, read back from memory, and written once each, oldest first, when it
answers, whoever calls `write_held` and however often."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from detection.events import new_event
from lazarus_lite import background
from lazarus_lite.audit import AuditLog
from lazarus_lite.decisions import Decisions
from lazarus_lite.held_records import HeldRecordLog


class RecordLogThatCanBeAway:
    """A record log in memory that yields to the loop on every call (as a network one does),
    and can be away (refusing every call as a connection would), or silent."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.audits: dict[str, str] = {}
        self.away = False
        self.silent = False

    async def _call(self) -> None:
        await asyncio.sleep(0)
        if self.silent:
            await asyncio.sleep(3600)
        if self.away:
            raise ConnectionError("the record log is away")

    async def save_audit(self, event_id: str, raw: str, received_at: float) -> None:
        await self._call()
        self.audits[event_id] = raw
        self.writes.append(f"audit {event_id}")

    async def audit(self, event_id: str) -> str | None:
        await self._call()
        return self.audits.get(event_id)

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        await self._call()
        self.writes.append(f"escalation {event_id}")

    async def append_shadow_decision(self, decision: dict[str, str]) -> None:
        await self._call()
        self.writes.append(f"shadow {decision['event']}")


def held_log(limit: int = 1000) -> tuple[HeldRecordLog, RecordLogThatCanBeAway]:
    log = RecordLogThatCanBeAway()
    return HeldRecordLog(log, "n1", limit=limit, direct_timeout=0.2), log  # type: ignore[arg-type]


def test_writes_go_straight_to_a_log_that_answers() -> None:
    records, log = held_log()

    asyncio.run(records.save_audit("e0", "{}", 0.0))

    assert (log.writes, len(records)) == (["audit e0"], 0)


def test_a_write_the_log_refuses_is_held_and_every_write_after_it_waits_behind_it() -> None:
    records, log = held_log()

    async def while_away_then_back() -> int:
        log.away = True
        await records.save_audit("e0", "{}", 0.0)
        log.away = False  # back, but what came first is not written yet
        await records.append_escalation("e0", "why", "n1")
        await records.append_shadow_decision({"event": "e1"})
        assert log.writes == []
        return await records.write_held()

    assert asyncio.run(while_away_then_back()) == 3
    assert log.writes == ["audit e0", "escalation e0", "shadow e1"]
    assert len(records) == 0


def test_a_log_that_does_not_answer_is_not_waited_for() -> None:
    records, log = held_log()
    log.silent = True

    asyncio.run(asyncio.wait_for(records.save_audit("e0", "{}", 0.0), timeout=2.0))

    assert records.held_events == ["e0"]


def test_a_held_record_reads_back_as_last_saved() -> None:
    records, log = held_log()

    async def save_twice_while_away() -> str | None:
        log.away = True
        await records.save_audit("e0", '{"v": 1}', 0.0)
        await records.save_audit("e0", '{"v": 2}', 0.0)
        return await records.audit("e0")

    assert asyncio.run(save_twice_while_away()) == '{"v": 2}'


def test_a_record_not_held_is_read_from_the_log_and_its_absence_raises() -> None:
    records, log = held_log()
    log.away = True

    with pytest.raises(ConnectionError):
        asyncio.run(records.audit("e0"))


def test_a_failure_that_is_not_the_log_being_away_is_raised_not_held() -> None:
    records, log = held_log()

    async def broken(*_: object) -> None:
        raise ValueError("a bug")

    log.save_audit = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        asyncio.run(records.save_audit("e0", "{}", 0.0))
    assert len(records) == 0


def test_a_write_that_fails_again_stays_held_for_the_next_round() -> None:
    records, log = held_log()
    log.away = True
    asyncio.run(records.save_audit("e0", "{}", 0.0))

    assert asyncio.run(records.write_held()) == 0
    log.away = False
    assert asyncio.run(records.write_held()) == 1
    assert log.writes == ["audit e0"]


def test_two_concurrent_writers_write_each_held_write_once_in_order() -> None:
    records, log = held_log()

    async def hold_then_write_twice() -> list[int]:
        log.away = True
        for event_id in ("e0", "e1", "e2"):
            await records.append_escalation(event_id, "why", "n1")
        log.away = False
        return list(await asyncio.gather(records.write_held(), records.write_held()))

    written = asyncio.run(hold_then_write_twice())

    assert log.writes == ["escalation e0", "escalation e1", "escalation e2"]
    assert sorted(written) == [0, 3]


def test_beyond_the_limit_the_oldest_held_write_is_dropped() -> None:
    records, log = held_log(limit=2)

    async def hold_three() -> None:
        log.away = True
        for event_id in ("e0", "e1", "e2"):
            await records.append_escalation(event_id, "why", "n1")
        log.away = False
        await records.write_held()

    asyncio.run(hold_three())

    assert log.writes == ["escalation e1", "escalation e2"]


def test_the_nodes_that_each_escalated_an_incident_without_the_store_record_it_once() -> None:
    log = RecordLogThatCanBeAway()
    incident = "ratequeue/s0/RedisMasterDown/s0-primary@1"

    async def three_nodes() -> None:
        for node in ("n1", "n2", "n3"):
            records = HeldRecordLog(log, node)  # type: ignore[arg-type]
            decisions = Decisions(node, records, AuditLog(records), None, None)  # type: ignore[arg-type]
            event = new_event("RedisMasterDown", environment="dev", region="local",
                              service="ratequeue", host="127.0.0.1:7000", source=f"lazarus:{node}",
                              shard="s0", incident_key=incident)  # fmt: skip
            await decisions.escalate_without_store(event, "store away")

    asyncio.run(three_nodes())

    # One audit record: the nodes share its id.
    assert len(log.audits) == 1


def test_the_nodes_periodic_writer_writes_what_was_held_once_the_log_answers() -> None:
    records, log = held_log()
    decisions = Decisions("n1", records, AuditLog(records), None, None)  # type: ignore[arg-type]

    async def away_then_back() -> None:
        log.away = True
        await records.append_escalation("e0", "why", "n1")
        writer = asyncio.create_task(background.write_held_records(decisions, 0.01))
        await asyncio.sleep(0.05)
        assert log.writes == [] and not writer.done()
        log.away = False
        for _ in range(200):
            if log.writes:
                break
            await asyncio.sleep(0.01)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    asyncio.run(away_then_back())

    assert (log.writes, len(records)) == (["escalation e0"], 0)
