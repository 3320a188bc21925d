"""Recovery with asynchronous acknowledgement (Sentinel, `ack: async`): a primary cut off on the
clients' side keeps acknowledging writes its demotion discards (and consumers may receive them
before it is demoted), so once Sentinel promoted, `recovered_within` measures to the first
write sent after the API routed to the promoted primary, never to an acknowledgement alone;
with none it fails saying so. The same with `ack: wait` and with a target that does not say its
`ack` (it may be either). Without a promotion, or under Lazarus, the first acknowledgement is
recovery, as before.

Not for: a real partition under Sentinel (tests/test_scenarios_on_both_managers.py).
"""

from __future__ import annotations

import pytest

from chaos.experiments import RecoveredWithin
from chaos.hypotheses import Observations, evaluate
from chaos.journal import Journal
from chaos.ledger import Attempt, Ledger
from chaos.recovery_watch import RECOVERED_BY, mark_write_after_switch
from ratequeue.topology import NodeRef, Shard, Topology

FAULT_AT = 100.0
SHARD = Shard(id="s0", slots=(0, 16383), epoch=1,
              primary=NodeRef(name="p", host="127.0.0.1", port=7000))  # fmt: skip
MAP = Topology(epoch=1, shards=[SHARD])


def partitioned_ledger() -> Ledger:
    """Writes acknowledged at +0.1 s and +1 s by the cut-off primary, then one sent at +4 s
    (after the API switched at +3 s) acknowledged 50 ms later."""
    ledger = Ledger()
    for offset in (0.1, 1.0, 4.0):
        ledger.record_attempt(Attempt(FAULT_AT + offset, "+14155550100", "s0", True,
                                      "acknowledged", 0.05))  # fmt: skip
    return ledger


def journal(ack: str | None, *, promoted: bool = True, api_followed: bool = True,
            failover: str = "sentinel") -> Journal:  # fmt: skip
    run = Journal(run_id="r", experiment="partition", deployment="d", environment="dev",
                  failover=failover, ack=ack, started_at=FAULT_AT - 3)  # type: ignore[arg-type]  # fmt: skip
    run.mark("fault_injected", FAULT_AT, FAULT_AT)
    run.mark("first_acknowledged_write", FAULT_AT + 0.15, FAULT_AT, "s0")
    if promoted:
        run.mark("promotion", FAULT_AT + 2.5, FAULT_AT, "s0: s0-replica1")
    if promoted and api_followed:
        run.mark("topology_published", FAULT_AT + 3.0, FAULT_AT, "s0: s0-replica1")
    return run


def recovered_within(run: Journal, ledger: Ledger) -> tuple[bool, object, str]:
    mark_write_after_switch(run, ledger, {"s0"}, FAULT_AT)
    observations = Observations(
        ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=FAULT_AT,
        recovered_at=run.moment(run.recovery_mark), recovered_by=RECOVERED_BY[run.recovery_mark],
        topology_before=MAP, topology_after=MAP, primaries_answering={"s0": ["p"]},
    )  # fmt: skip
    (outcome,) = evaluate([RecoveredWithin(type="recovered_within", seconds=10)], observations,
                          "sentinel")  # fmt: skip
    return outcome.ok, outcome.measured, outcome.detail


def test_with_async_acks_recovery_is_measured_to_the_first_write_sent_after_the_api_switched() -> (
    None
):
    run = journal("async")
    ok, measured, detail = recovered_within(run, partitioned_ledger())
    assert (ok, measured) == (True, 4.05)
    assert "after the API routed to the promoted primary" in detail
    assert run.recovery_seconds() == pytest.approx(4.05)


def test_with_async_acks_and_an_api_that_never_followed_recovered_within_fails_saying_so() -> None:
    run = journal("async", api_followed=False)
    ok, measured, detail = recovered_within(run, partitioned_ledger())
    assert (ok, measured) == (False, None)
    assert detail.startswith("no first write acknowledged on the shard that was sent after the API")
    assert run.recovery_seconds() is None


def test_with_async_acks_and_no_promotion_the_first_acknowledgement_is_recovery() -> None:
    # Nothing was demoted: what the primary acknowledged stays.
    ok, measured, _ = recovered_within(journal("async", promoted=False), partitioned_ledger())
    assert (ok, measured) == (True, 0.15)


@pytest.mark.parametrize("ack", ["wait", None])
def test_under_sentinel_with_wait_acks_or_none_said_recovery_is_the_first_write_after_the_switch(
    ack: str | None,
) -> None:
    # A target without `ack` may acknowledge asynchronously: the cut-off primary's
    # acknowledgement at +0.15 s proves nothing.
    run = journal(ack)
    ok, measured, _ = recovered_within(run, partitioned_ledger())
    assert (ok, measured) == (True, 4.05)
    assert run.recovery_mark == "first_write_after_switch"


def test_under_lazarus_the_first_acknowledgement_is_recovery() -> None:
    ok, measured, _ = recovered_within(journal("wait", failover="lazarus"), partitioned_ledger())
    assert (ok, measured) == (True, 0.15)
