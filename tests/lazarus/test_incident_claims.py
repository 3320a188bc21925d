"""Incident claims on a real redis-server control store: a later report waits for the decision
holding its incident, is decided on its own after a refusal, and is a duplicate of a decision
that acted; of two reports after a refusal, one decides (no double failover)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from common.redis_processes import RedisProcess
from detection.events import Event
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.incidents import Claim, IncidentClaims
from ratequeue.local_cluster import start_node

KEY = "ratequeue/s0/RedisMasterDown/s0-primary@1"


@pytest.fixture(scope="module")
def control_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path_factory.mktemp("claims"))
    yield node
    node.stop()


@pytest.fixture
async def control(control_node: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis(host=control_node.host, port=control_node.port)
    await connection.flushall()
    yield connection
    await connection.aclose()


@pytest.fixture
def audit(control: aioredis.Redis) -> AuditLog:
    return AuditLog(RedisCoordinationStore(control).records)


@pytest.fixture
def claims(control: aioredis.Redis, audit: AuditLog) -> IncidentClaims:
    store = RedisCoordinationStore(control)
    return IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=5)


def report(event_id: str) -> Event:
    return Event(id=event_id, type="RedisMasterDown", environment="dev", region="local",
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


async def still_waiting(task: asyncio.Task[Claim]) -> None:
    await asyncio.sleep(0.3)
    assert not task.done()


async def test_a_report_during_a_decision_waits_and_is_decided_on_its_own_after_a_refusal(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    false_alarm, real = report("false-alarm"), report("real-kill")
    first = await opened(audit, false_alarm)
    assert await claims.claim(false_alarm) == Claim()
    await opened(audit, real)
    later = asyncio.create_task(claims.claim(real))
    await still_waiting(later)
    await decided(audit, first, "escalated", reason="quorum not reached")
    claim = await later
    assert claim.duplicate_of is None and claim.took_over_from == "false-alarm"
    assert await claims.claims.holder("RedisMasterDown", KEY) == "real-kill"


async def test_a_report_after_a_refusal_is_decided_on_its_own_at_once(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    false_alarm, real = report("false-alarm"), report("real-kill")
    first = await opened(audit, false_alarm)
    await claims.claim(false_alarm)
    await decided(audit, first, "no_action", gate="rate_limit")
    await opened(audit, real)
    assert await claims.claim(real) == Claim(took_over_from="false-alarm")


async def test_a_report_during_a_decision_that_acts_is_its_duplicate(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    kill, second_sensor = report("kill"), report("second-sensor")
    first = await opened(audit, kill)
    await claims.claim(kill)
    await opened(audit, second_sensor)
    later = asyncio.create_task(claims.claim(second_sensor))
    await still_waiting(later)
    await decided(audit, first, "scheduled", workflow_id="wf-1")
    assert (await later).duplicate_of == "kill"
    assert await claims.claims.holder("RedisMasterDown", KEY) == "kill"


async def test_of_two_reports_after_a_refusal_one_decides_and_the_other_is_its_duplicate(
    claims: IncidentClaims, audit: AuditLog
) -> None:
    false_alarm = report("false-alarm")
    first = await opened(audit, false_alarm)
    await claims.claim(false_alarm)
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


async def test_a_report_is_merged_once_the_decision_it_waits_for_outlasts_the_wait(
    control: aioredis.Redis, audit: AuditLog
) -> None:
    store = RedisCoordinationStore(control)
    claims = IncidentClaims(store.incidents, audit, ttl=60, retry_after=120, decision_wait=0.5)
    stuck, later = report("coordinator-died"), report("later")
    await opened(audit, stuck)
    await claims.claim(stuck)
    await opened(audit, later)
    claim = await claims.claim(later)
    assert claim.duplicate_of == "coordinator-died" and claim.waited >= 0.5
