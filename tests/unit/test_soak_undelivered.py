"""The soak's carry of acknowledged ids a cycle's drain did not see delivered: a later cycle
that delivers them makes them late, not lost (`chaos.soak_deliveries.Undelivered`)."""

from __future__ import annotations

from chaos.soak_deliveries import Undelivered, describe_counts


def test_ids_a_later_cycle_delivers_are_late_for_the_cycle_that_left_them() -> None:
    undelivered = Undelivered()
    undelivered.left_by(6, ["a", "b", "c"])
    assert undelivered.delivered(["a", "b", "x"]) == {6: 2}  # x: no cycle left it
    assert undelivered.by_cycle() == {6: 1}


def test_an_id_is_late_once_however_often_it_is_delivered() -> None:
    undelivered = Undelivered()
    undelivered.left_by(2, ["a"])
    assert undelivered.delivered(["a"]) == {2: 1}
    assert undelivered.delivered(["a"]) == {}


def test_ids_left_by_several_cycles_are_counted_by_their_own_cycle() -> None:
    undelivered = Undelivered()
    undelivered.left_by(3, ["a", "b"])
    undelivered.left_by(5, ["c"])
    assert undelivered.delivered(["c", "a"]) == {3: 1, 5: 1}
    assert describe_counts(undelivered.by_cycle()) == "1 of cycle 3"


def test_an_id_left_again_keeps_the_cycle_that_first_left_it() -> None:
    undelivered = Undelivered()
    undelivered.left_by(1, ["a"])
    undelivered.left_by(2, ["a"])
    assert undelivered.by_cycle() == {1: 1}
