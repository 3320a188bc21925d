"""Incident claims on a real coordination store (the suite's: the control Redis, or etcd): a
later report waits for the decision holding its incident, is decided on its own after a
refusal, is a duplicate of a decision that acted, and is left pending when that decision
outlasts the wait; of two reports after a refusal, one decides (no double failover)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from detection.events import Event, EventType
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.errors import DecisionPending
from lazarus_lite.incidents import Claim, IncidentClaims

KEY = "ratequeue/s0/RedisMasterDown/s0-primary@1"


@pytest.fixture
def audit(coordination: CoordinationStore) -> AuditLog:
    return AuditLog(coordination.records)


@pytest.fixture
def claims(coordination: CoordinationStore, audit: AuditLog) -> IncidentClaims:
    store = coordination
    return IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=5)


def report(event_id: str, kind: EventType = "RedisMasterDown") -> Event:
    return Event(id=event_id, type=kind, environment="dev", region="local",
                 service="ratequeue", shard="s0", host="127.0.0.2:7001", source="sensor",
                 incident_key=KEY, occurred_at=datetime.now(UTC))  # fmt: skip


async def opened(audit: AuditLog, event: Event) -> AuditRecord:
    """The event's record as the controller saves it before claiming."""
    record = AuditRecord(
        event_id=event.id,
        event=event.model_dump(mode="json"),
        service=event.service,
        received_at=time.time(),
        coordinator="n1",
    )
    await audit.save(record)
    return record


async def decided(audit: AuditLog, record: AuditRecord, outcome: str, **fields: object) -> None:
    record.outcome, record.decided_at = outcome, time.time()  # type: ignore[assignment]
    for name, value in fields.items():
        setattr(record, name, value)
    await audit.save(record)


async def holding(claims: IncidentClaims, audit: AuditLog, event_id: str) -> AuditRecord:
    """The record of a report that claimed the incident and is being decided."""
    event = report(event_id)
    record = await opened(audit, event)
    assert await claims.claim(event) == Claim()
    return record


async def waiting(claims: IncidentClaims, audit: AuditLog, event_id: str) -> asyncio.Task[Claim]:
    """A later report's claim, waiting for the decision of the one holding the incident."""
    event = report(event_id)
    await opened(audit, event)
    task = asyncio.create_task(claims.claim(event))
    await asyncio.sleep(0.3)
    assert not task.done()
    return task


@pytest.mark.parametrize(
    ("outcome", "fields", "claimed", "holder"),
    [
        ("escalated", {"reason": "quorum not reached"}, Claim(took_over_from="first"), "later"),
        ("scheduled", {"workflow_id": "wf-1"}, Claim(duplicate_of="first"), "first"),
    ],
    ids=["refused: decided on its own", "acted: its duplicate"],
)
async def test_a_report_during_a_decision_waits_for_it_and_is_judged_by_its_outcome(
    claims: IncidentClaims,
    audit: AuditLog,
    outcome: str,
    fields: dict,
    claimed: Claim,
    holder: str,
) -> None:
    first = await holding(claims, audit, "first")
    later = await waiting(claims, audit, "later")
    await decided(audit, first, outcome, **fields)
    assert await later == claimed
    assert await claims.claims.holder("RedisMasterDown", KEY) == holder


async def test_a_report_after_a_refusal_is_decided_on_its_own_at_once(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    first = await holding(claims, audit, "false-alarm")
    await decided(audit, first, "no_action", gate="rate_limit")
    real = report("real-kill")
    await opened(audit, real)
    assert await claims.claim(real) == Claim(took_over_from="false-alarm")


async def test_of_two_reports_after_a_refusal_one_decides_and_the_other_is_its_duplicate(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    first = await holding(claims, audit, "false-alarm")
    await decided(audit, first, "escalated", reason="quorum not reached")
    reports = [report("sensor-1"), report("sensor-2")]
    records = {event.id: await opened(audit, event) for event in reports}
    tasks = {event.id: asyncio.create_task(claims.claim(event)) for event in reports}
    done, pending = await asyncio.wait(tasks.values(), timeout=3)
    assert len(done) == 1 and len(pending) == 1  # the loser waits on the winner's decision
    winner = next(name for name, task in tasks.items() if task in done)
    loser = next(name for name, task in tasks.items() if task in pending)
    assert tasks[winner].result() == Claim(took_over_from="false-alarm")
    await decided(audit, records[winner], "scheduled", workflow_id="wf-1")
    assert (await tasks[loser]).duplicate_of == winner


async def test_a_recovery_of_a_refused_false_alarm_does_not_free_the_claim_a_kill_took_over(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    false_alarm = await holding(claims, audit, "false-alarm")
    kill_reports = [await waiting(claims, audit, name) for name in ("kill-1", "kill-2")]
    await claims.release_on_recovery(report("flap-recovered", "RedisMasterRecovered"))
    await decided(audit, false_alarm, "escalated", reason="quorum not reached")
    done, pending = await asyncio.wait(kill_reports, timeout=3)
    assert len(done) == 1 and len(pending) == 1
    (taker,) = done
    winner = await claims.claims.holder("RedisMasterDown", KEY)
    assert taker.result() == Claim(took_over_from="false-alarm") and winner != "false-alarm"
    await claims.forget_if_recovered(false_alarm)  # the false alarm's decision ends
    assert await claims.claims.holder("RedisMasterDown", KEY) == winner
    await asyncio.sleep(0.3)
    assert not pending.pop().done()  # still waits on the winner: one decision, one failover


async def test_a_report_still_waiting_when_the_wait_ends_is_left_pending_not_merged(
    coordination: CoordinationStore, audit: AuditLog
) -> None:
    store = coordination
    claims = IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=0.5)
    await holding(claims, audit, "slow-refusal")
    later = report("real-kill")
    await opened(audit, later)
    started = time.monotonic()
    with pytest.raises(DecisionPending, match="slow-refusal"):
        await claims.claim(later)
    assert time.monotonic() - started >= 0.5
    assert await claims.claims.holder("RedisMasterDown", KEY) == "slow-refusal"


async def test_a_report_takes_over_a_claim_whose_decision_stayed_undecided_too_long(
    coordination: CoordinationStore, audit: AuditLog
) -> None:
    store = coordination
    claims = IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=0.2,
                            abandoned_after=60)  # fmt: skip
    died = await holding(claims, audit, "coordinator-died")
    later = report("real-kill")
    await opened(audit, later)
    with pytest.raises(DecisionPending):
        await claims.claim(later)  # undecided for less than abandoned_after: held back
    died.received_at -= 61  # undecided past abandoned_after, without sleeping that long
    await audit.save(died)

    claimed = await claims.claim(later)

    assert claimed == Claim(took_over_from="coordinator-died", abandoned=True)
    assert await claims.claims.holder("RedisMasterDown", KEY) == "real-kill"


async def test_a_claim_whose_record_was_never_written_holds_reports_back_then_is_taken_over(
    coordination: CoordinationStore, audit: AuditLog
) -> None:
    # Its coordinator decided without the record log (the record held in its memory) and died:
    # a later report must not be merged into a decision nobody can read.
    store = coordination
    claims = IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=0.2,
                            abandoned_after=2)  # fmt: skip
    assert await store.incidents.claim("RedisMasterDown", KEY, "decided-unseen", 60)
    later = report("real-kill")
    await opened(audit, later)
    with pytest.raises(DecisionPending):
        await claims.claim(later)  # the claim is younger than abandoned_after: held back
    await asyncio.sleep(2.1)  # the claim's age is read from its TTL: no clock to move

    claimed = await claims.claim(later)

    assert claimed == Claim(took_over_from="decided-unseen", abandoned=True)


async def test_a_recovery_keeps_the_claim_of_a_decision_whose_record_cannot_be_read(
    coordination: CoordinationStore, claims: IncidentClaims
) -> None:
    # Decided on a node that holds its record while the record log is away: it may have acted,
    # so a recovery read elsewhere marks the incident recovered rather than free it.
    store = coordination
    assert await store.incidents.claim("RedisMasterDown", KEY, "decided-unseen", 60)

    await claims.release_on_recovery(report("flap-recovered", "RedisMasterRecovered"))

    assert await store.incidents.holder("RedisMasterDown", KEY) == "decided-unseen"
    assert await store.incidents.take_recovered("RedisMasterDown", KEY)
