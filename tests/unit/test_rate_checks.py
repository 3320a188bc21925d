"""The ledger's rate check and the `rate_limits_held` hypothesis: each delivery is judged at the
moment the queue leased it (its answer's `leased_at`), so a dequeue's latency neither makes up
an overshoot nor hides one; without it, at the request of its dequeue, the same end for all.

Not for: the queue's own rate limiting (tests/test_rate_conformance.py).
"""

from __future__ import annotations

import pytest

from chaos.experiments import RateLimitsHeld
from chaos.hypotheses import Observations, comparable_measures, evaluate
from chaos.ledger import Delivery, Ledger
from chaos.load import default_rates, lease_time

NUMBER = "+14155550101"  # a long code: one message a second, no burst
RATES = default_rates([NUMBER])


def _ledger(*deliveries: tuple[float, float, float | None]) -> Ledger:
    """Deliveries of NUMBER as (requested, answered, leased) times."""
    ledger = Ledger()
    for index, (requested, answered, leased) in enumerate(deliveries):
        ledger.record_delivery(Delivery(answered, f"m{index}", NUMBER, 1, 1,
                                        requested_at=requested, leased_at=leased))  # fmt: skip
    return ledger


def _held(ledger: Ledger) -> bool:
    observations = Observations(ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=0.0,
                                recovered_at=None, topology_before=None, topology_after=None,  # type: ignore[arg-type]
                                primaries_answering={})  # fmt: skip
    [outcome] = evaluate([RateLimitsHeld(type="rate_limits_held")], observations)
    return outcome.ok


def test_an_overshoot_leased_while_a_dequeue_waited_on_a_dead_shard_fails_the_hypothesis() -> None:
    # Both leased 10 ms apart on the live shard; the second dequeue was sent 5 s after the first
    # and its answer waited on a dead primary's connect timeout. Neither its request nor its
    # answer shows how close the leases were; the lease times do.
    ledger = _ledger((0.0, 5.0, 5.0), (4.9, 9.9, 5.01))
    [check] = ledger.rate_checks(RATES)
    assert check.max_early_seconds == pytest.approx(0.99)
    assert not _held(ledger)


def test_a_slow_answer_is_not_an_overshoot_when_the_leases_were_a_full_interval_apart() -> None:
    ledger = _ledger((0.0, 5.0, 0.0), (1.0, 1.0, 1.0))
    [check] = ledger.rate_checks(RATES)
    assert check.max_early_seconds == 0.0
    assert _held(ledger)


def test_without_lease_times_deliveries_are_judged_at_their_requests() -> None:
    # Answered in the opposite order; requested 0.25 s apart: 0.75 s early.
    ledger = _ledger((0.0, 3.0, None), (0.25, 0.3, None))
    [check] = ledger.rate_checks(RATES)
    assert check.max_early_seconds == pytest.approx(0.75)


def test_a_lease_time_is_read_from_the_answer_as_rfc_3339() -> None:
    assert lease_time({"leased_at": "2026-12-03T04:00:00.250000+00:00"}) == 1796270400.25
    assert lease_time({"leased_at": "yesterday"}) is None
    assert lease_time({}) is None


def test_every_run_measures_its_earliest_delivery_whatever_its_hypotheses() -> None:
    ledger = _ledger((0.0, 5.0, 5.0), (4.9, 9.9, 5.01))
    observations = Observations(ledger=ledger, shard="s0", faulted_shards={"s0"}, fault_at=0.0,
                                recovered_at=None, topology_before=None, topology_after=None,  # type: ignore[arg-type]
                                primaries_answering={"s0": ["p"], "s1": ["a", "b"]})  # fmt: skip
    assert comparable_measures(observations) == {
        "earliest_delivery_before_rate_seconds": 0.99,
        "primaries_answering": {"s0": ["p"], "s1": ["a", "b"]},
    }


def test_a_run_that_delivered_nothing_measures_no_earliest_delivery() -> None:
    observations = Observations(ledger=Ledger(), shard="s0", faulted_shards={"s0"}, fault_at=0.0,
                                recovered_at=None, topology_before=None, topology_after=None,  # type: ignore[arg-type]
                                primaries_answering={})  # fmt: skip
    assert comparable_measures(observations)["earliest_delivery_before_rate_seconds"] is None
