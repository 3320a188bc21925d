"""Recovery with asynchronous acknowledgement (Sentinel, `ack: async`): a primary cut off on the
clients' side keeps acknowledging writes its demotion discards, so `recovered_within` measures to
the first write acknowledged after the fault that was kept (delivered), never to an
acknowledgement alone; with none kept it fails saying so. With `ack: wait` the first
acknowledgement is recovery, as before.

Not for: a real partition under Sentinel (tests/test_scenarios_on_both_managers.py).
"""

from __future__ import annotations

from chaos.experiments import RecoveredWithin
from chaos.hypotheses import Observations, evaluate
from chaos.journal import Journal
from chaos.ledger import Delivery, Ledger
from chaos.recovery_watch import RECOVERED_BY, mark_kept_recovery
from ratequeue.topology import NodeRef, Shard, Topology

FAULT_AT = 100.0
SHARD = Shard(id="s0", slots=(0, 16383), epoch=1,
              primary=NodeRef(name="p", host="127.0.0.1", port=7000))  # fmt: skip
MAP = Topology(epoch=1, shards=[SHARD])


def partitioned_ledger() -> Ledger:
    """Acknowledged at +0.1 s and +1 s by the cut-off primary (lost), at +4 s by the new one."""
    ledger = Ledger()
    for message_id, offset in (("lost-1", 0.1), ("lost-2", 1.0), ("kept", 4.0)):
        ledger.record_ack(message_id, "+14155550100", "s0", FAULT_AT + offset, 1)
    ledger.record_delivery(Delivery(FAULT_AT + 5, "kept", "+14155550100", 1, 1))
    return ledger


def journal(ack: str) -> Journal:
    run = Journal(run_id="r", experiment="partition", deployment="d", environment="dev",
                  failover="sentinel", ack=ack, started_at=FAULT_AT - 3)  # type: ignore[arg-type]  # fmt: skip
    run.mark("fault_injected", FAULT_AT, FAULT_AT)
    run.mark("first_acknowledged_write", FAULT_AT + 0.1, FAULT_AT, "s0")
    return run


def recovered_within(run: Journal, ledger: Ledger) -> tuple[bool, object, str]:
    observations = Observations(
        ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=FAULT_AT,
        recovered_at=run.moment(run.recovery_mark), recovered_by=RECOVERED_BY[run.recovery_mark],
        topology_before=MAP, topology_after=MAP, primaries_answering={"s0": ["p"]},
    )  # fmt: skip
    (outcome,) = evaluate([RecoveredWithin(type="recovered_within", seconds=10)], observations,
                          "sentinel")  # fmt: skip
    return outcome.ok, outcome.measured, outcome.detail


def test_the_first_kept_acknowledgement_skips_the_ones_that_were_lost() -> None:
    assert partitioned_ledger().first_kept_ack_after(FAULT_AT, "s0") == FAULT_AT + 4.0


def test_with_async_acks_recovery_is_measured_to_the_first_kept_write() -> None:
    run, ledger = journal("async"), partitioned_ledger()
    mark_kept_recovery(run, ledger, {"s0"}, FAULT_AT)
    ok, measured, detail = recovered_within(run, ledger)
    assert (ok, measured) == (True, 4.0)
    assert "kept" in detail
    assert run.recovery_seconds() == 4.0


def test_with_async_acks_and_nothing_kept_recovered_within_fails_saying_so() -> None:
    run, ledger = journal("async"), partitioned_ledger()
    ledger.deliveries.clear()  # everything acknowledged after the fault was lost
    mark_kept_recovery(run, ledger, {"s0"}, FAULT_AT)
    ok, measured, detail = recovered_within(run, ledger)
    assert (ok, measured) == (False, None)
    assert detail.startswith("no first write acknowledged on the shard that was kept")
    assert run.recovery_seconds() is None


def test_with_wait_acks_the_first_acknowledgement_is_recovery() -> None:
    run = journal("wait")
    ok, measured, _ = recovered_within(run, partitioned_ledger())
    assert (ok, measured) == (True, 0.1)
