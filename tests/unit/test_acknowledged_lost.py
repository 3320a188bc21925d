"""The `acknowledged_lost` hypothesis's detail: which shards acknowledged what was never
delivered and when the consumers last received anything, so a failed run tells a queue that
kept messages from consumers that stopped receiving.

Not for: the other hypotheses, or how a run gathers its observations (chaos.runner).
"""

from __future__ import annotations

import asyncio

from chaos.experiments import AcknowledgedLost
from chaos.hypotheses import Observations, evaluate
from chaos.ledger import Delivery, Ledger


def observed(ledger: Ledger) -> Observations:
    return Observations(ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=100.0,
                        recovered_at=None, topology_before=None, topology_after=None,  # type: ignore[arg-type]
                        primaries_answering={}, fault_ended_at=None)  # fmt: skip


def test_lost_messages_are_counted_by_the_shard_that_acknowledged_them() -> None:
    ledger = Ledger()
    ledger.record_ack("a", "n1", "s0", 100.0, 1)
    ledger.record_ack("b", "n2", "s0", 101.0, 1)
    ledger.record_ack("c", "n3", "s2", 102.0, 1)
    ledger.record_ack("d", "n4", "s1", 103.0, 1)
    ledger.record_delivery(Delivery(98.0, "d", "n4", 1, 1))
    [outcome] = evaluate([AcknowledgedLost(type="acknowledged_lost", max=0)], observed(ledger))
    assert not outcome.ok and outcome.measured == 3
    assert "lost by shard {'s0': 2, 's2': 1}" in outcome.detail
    assert "last delivery -5.0 s from the last acknowledgement" in outcome.detail


def test_lost_messages_with_no_delivery_at_all_say_so() -> None:
    ledger = Ledger()
    ledger.record_ack("a", "n1", "s1", 100.0, 1)
    [outcome] = evaluate([AcknowledgedLost(type="acknowledged_lost", max=0)], observed(ledger))
    assert "lost by shard {'s1': 1}; no delivery at all" in outcome.detail


def test_a_consumer_that_ended_on_an_error_is_named_beside_what_was_lost() -> None:
    async def consumer_that_breaks() -> None:
        raise KeyError("id")

    async def consumer_that_is_stopped() -> None:
        await asyncio.sleep(3600)

    async def run_consumers(ledger: Ledger) -> None:
        broken = asyncio.create_task(consumer_that_breaks())
        stopped = asyncio.create_task(consumer_that_is_stopped())
        for consumer in (broken, stopped):
            consumer.add_done_callback(ledger.record_consumer_end)
        await asyncio.sleep(0)
        stopped.cancel()
        await asyncio.gather(broken, stopped, return_exceptions=True)

    ledger = Ledger()
    ledger.record_ack("a", "n1", "s0", 100.0, 1)
    asyncio.run(run_consumers(ledger))
    assert ledger.consumer_failures == ["KeyError('id')"]  # the cancelled one is no failure
    [outcome] = evaluate([AcknowledgedLost(type="acknowledged_lost", max=0)], observed(ledger))
    assert "consumers ended on [\"KeyError('id')\"]" in outcome.detail
