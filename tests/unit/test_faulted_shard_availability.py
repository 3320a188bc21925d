"""The `faulted_shard_availability` hypothesis: the share of enqueues the faulted shard
acknowledged while the fault lasted (from the fault to its rollback), other shards and the
time outside the window left out.

Not for: the other hypotheses (tests/test_scenarios.py runs them), or how a run gathers its
observations (chaos.runner).
"""

from __future__ import annotations

from chaos.experiments import FaultedShardAvailability
from chaos.hypotheses import Observations, evaluate
from chaos.ledger import Attempt, Ledger

FAULT_AT, ROLLED_BACK_AT = 100.0, 104.0


def observed(attempts: list[tuple[float, str, bool]], *, ended: float | None) -> Observations:
    ledger = Ledger()
    for at, shard, ok in attempts:
        outcome = "acknowledged" if ok else "timeout"
        ledger.record_attempt(Attempt(at, "n1", shard, ok, outcome, 0.01))
    return Observations(ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=FAULT_AT,
                        recovered_at=None, topology_before=None, topology_after=None,  # type: ignore[arg-type]
                        primaries_answering={}, fault_ended_at=ended)  # fmt: skip


def test_only_the_faulted_shard_during_the_fault_counts() -> None:
    attempts = [
        (99.0, "s0", False),  # before the fault
        (101.0, "s0", True),
        (102.0, "s0", True),
        (103.0, "s0", False),
        (103.5, "s1", False),  # another shard
        (106.0, "s0", False),  # after the rollback
    ]
    [outcome] = evaluate([FaultedShardAvailability(type="faulted_shard_availability", min=0.6)],
                         observed(attempts, ended=ROLLED_BACK_AT))  # fmt: skip
    assert outcome.measured == {"s0": 0.6667} and outcome.ok


def test_too_few_acknowledged_or_no_attempt_at_all_fails() -> None:
    hypothesis = FaultedShardAvailability(type="faulted_shard_availability", min=0.99)
    [low] = evaluate([hypothesis], observed([(101.0, "s0", False)], ended=ROLLED_BACK_AT))
    [none] = evaluate([hypothesis], observed([(101.0, "s1", True)], ended=ROLLED_BACK_AT))
    assert not low.ok and not none.ok and none.measured == {}


def test_a_fault_never_rolled_back_counts_to_the_end() -> None:
    attempts = [(101.0, "s0", True), (500.0, "s0", False)]
    [outcome] = evaluate([FaultedShardAvailability(type="faulted_shard_availability", min=0.5)],
                         observed(attempts, ended=None))  # fmt: skip
    assert outcome.measured == {"s0": 0.5}
