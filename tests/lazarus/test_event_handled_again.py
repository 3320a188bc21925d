"""`ControllerNode.handle` with an event handed out again: a refusal saved whose person was never
paged (its node stopped, or the pager failed, between the two) is paged once, however often the
event comes; a report held back by an undecided claim is counted; a slow decision whose claim
was taken over starts no workflow; another event given the same id is dead-lettered. The node is
built on a real coordination store (the suite's: the control Redis, or etcd) and not started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from detection.events import Event, new_event
from detection.streams import DeadLetters, RedisEventStream
from lazarus_lite.audit import AuditRecord, QuorumOutcome
from lazarus_lite.background import consume_events
from lazarus_lite.controller import ControllerNode
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.redis_keys import ESCALATIONS_STREAM
from lazarus_lite.decisions import ESCALATION_DUE
from lazarus_lite.errors import DecisionPending
from lazarus_lite.incidents import Claim
from lazarus_lite.settings import ControllerSettings

RECLAIM_MS = 1200


@pytest.fixture
async def node(
    control: aioredis.Redis, coordination: CoordinationStore
) -> AsyncIterator[ControllerNode]:
    address = control.connection_pool.connection_kwargs
    url = f"redis://{address['host']}:{address['port']}/0"
    # Quick rounds: a report waits 0.3 s for an earlier report's decision.
    settings = ControllerSettings(node_id="n1", control_url=url, quorum_timeout=0.1,
                                  api_token="a-token-of-sixteen-chars")  # fmt: skip
    stream = RedisEventStream(control, reclaim_idle_ms=RECLAIM_MS)
    built = ControllerNode(settings, store=coordination, stream=stream)
    yield built
    await built.quorum.aclose()
    await built.decisions.aclose()


def report(source: str = "sensor") -> Event:
    return new_event("RedisMasterDown", environment="dev", region="local", service="ratequeue",
                     shard="s0", host="127.0.0.2:7001", source=source,
                     incident_key="ratequeue/s0/RedisMasterDown/s0-primary@1")  # fmt: skip


async def refused_unpaged(node: ControllerNode) -> Event:
    """An event whose refusal is saved with its page due and not yet sent."""
    event = report()
    record = AuditRecord(event_id=event.id, event=event.model_dump(mode="json"),
                         service=event.service, received_at=time.time(), coordinator="n1",
                         outcome="escalated", reason="quorum not reached",
                         decided_at=time.time())  # fmt: skip
    record.note(ESCALATION_DUE, "quorum not reached")
    await node.audit.save(record)
    return event


async def test_a_refusal_saved_but_not_paged_is_paged_exactly_once_when_handled_again(
    node: ControllerNode, control: aioredis.Redis
) -> None:
    event = await refused_unpaged(node)

    for _ in range(2):  # handed out again, twice
        record = await node.handle(event)
        assert record is not None and record.outcome == "escalated"

    escalations = await control.xrange(ESCALATIONS_STREAM)
    assert [fields[b"event_id"].decode() for _, fields in escalations] == [event.id]


async def test_a_report_held_back_by_an_undecided_claim_is_counted(node: ControllerNode) -> None:
    undecided = report("sensor-1")
    await node.decisions.open(undecided)
    assert await node.incidents.claim(undecided) == Claim()

    with pytest.raises(DecisionPending):
        await node.handle(report("sensor-2"))

    held_back = node.metrics.registry.get_sample_value("lazarus_reports_held_back_total")
    assert held_back == 1


async def test_an_event_handed_out_again_mid_page_is_paged_once(node: ControllerNode) -> None:
    event = await refused_unpaged(node)
    pages: list[str] = []
    page = node.decisions.notify_escalation

    async def slow_page(record: AuditRecord, reason: str) -> None:
        pages.append(record.event_id)
        await asyncio.sleep(RECLAIM_MS * 2 / 1000)  # the pager's retries, past the reclaim
        await page(record, reason)

    node.decisions.notify_escalation = slow_page  # type: ignore[method-assign]
    await node.stream.publish(event)
    handling: set[asyncio.Task] = set()
    keep_every = RECLAIM_MS / 3000
    consumers = [asyncio.create_task(consume_events(node.stream, name, node.handle, handling,
                                                    keep_every=keep_every))
                 for name in ("n1", "n2")]  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not pages or await node.stream.pending():
            assert time.monotonic() < deadline, "the event was not handled"
            await asyncio.sleep(0.05)
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, *handling, return_exceptions=True)
    assert pages == [event.id]


async def test_an_event_with_another_events_id_is_dead_lettered_and_the_first_record_kept(
    node: ControllerNode, control: aioredis.Redis
) -> None:
    first = await refused_unpaged(node)
    other = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios")  # fmt: skip
    reused = other.model_copy(update={"id": first.id})
    await node.stream.publish(reused)
    handling: set[asyncio.Task] = set()
    consumer = asyncio.create_task(consume_events(node.stream, "n1", node.handle, handling,
                                                  keep_every=RECLAIM_MS / 3000))  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (dead := await DeadLetters(control).list()) or await node.stream.pending():
            assert time.monotonic() < deadline, "the event was not dead-lettered"
            await asyncio.sleep(0.05)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, *handling, return_exceptions=True)
    [letter] = dead
    assert f"event id '{first.id}' is already the id of another event" in letter["reason"]
    kept = await node.audit.get(first.id)
    assert kept is not None and kept.event["type"] == "RedisMasterDown"


async def test_a_slow_decision_whose_claim_was_taken_over_starts_no_workflow(
    node: ControllerNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = report("sensor-1")
    record = await node.decisions.open(slow)
    assert await node.incidents.claim(slow) == Claim()
    # Slowed past abandoned_after: its record was received that long ago.
    record.received_at -= node.incidents.abandoned_after + 1
    await node.audit.save(record)
    taker = report("sensor-2")
    await node.decisions.open(taker)
    assert (await node.incidents.claim(taker)).abandoned
    started: list[str] = []

    async def start(*args: object, **kwargs: object) -> None:
        started.append(slow.id)

    monkeypatch.setattr(node.engine, "start", start)
    rule = node.rules.get("ratequeue_master_down")
    record.quorum = QuorumOutcome(required=1, passed=["n1"], failed=[], unanswered=[])

    decided = await node._decide_on_quorum(record, slow, rule)

    assert started == [] and decided.outcome == "duplicate" and taker.id in decided.reason
