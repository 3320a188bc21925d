"""The ledger's rate check: a delivery is early only by what no observation delay explains (the
queue leased it somewhere between its dequeue's request and answer)."""

from __future__ import annotations

import pytest

from chaos.ledger import Delivery, Ledger
from ratequeue.rates import Rate

NUMBER = "+14155550101"
ONE_PER_SECOND = {NUMBER: Rate(per_second=1, burst=1)}


def _early(*windows: tuple[float, float]) -> float:
    ledger = Ledger()
    for index, (requested, answered) in enumerate(windows):
        ledger.record_delivery(
            Delivery(answered, f"m{index}", NUMBER, 1, 1, requested_at=requested)
        )
    [check] = ledger.rate_checks(ONE_PER_SECOND)
    return check.max_early_seconds


def test_a_slow_answer_followed_by_a_fast_one_is_not_an_overshoot() -> None:
    # Leased at 0.0 but answered 0.5 s later (the dequeue waited on a dead shard); the next
    # leased and answered at 1.0: 0.5 s apart as seen, a full second apart as leased.
    assert _early((0.0, 0.5), (1.0, 1.0)) == 0.0


def test_deliveries_closer_than_the_rate_allows_whatever_the_delays_are_an_overshoot() -> None:
    assert _early((0.0, 0.01), (0.3, 0.31)) == pytest.approx(0.69)


def test_a_delivery_without_its_request_time_is_judged_at_its_answer() -> None:
    ledger = Ledger()
    ledger.record_delivery(Delivery(0.0, "a", NUMBER, 1, 1))
    ledger.record_delivery(Delivery(0.6, "b", NUMBER, 1, 1))
    [check] = ledger.rate_checks(ONE_PER_SECOND)
    assert check.max_early_seconds == pytest.approx(0.4)
