"""The supervisor's restart budget: a growing delay between restarts, and none beyond the
window's bound, so a crash loop does not spin."""

from __future__ import annotations

from chaos.supervisor import FIRST_DELAY, MAX_RESTARTS, WINDOW, RestartBudget


def test_each_restart_in_the_window_doubles_the_delay_before_the_next() -> None:
    budget = RestartBudget()
    delays = []
    for _ in range(3):
        delays.append(budget.delay(100.0))
        budget.restarts.append(100.0)
    assert delays == [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY]


def test_no_restart_once_the_window_holds_the_most_allowed_and_again_once_it_passed() -> None:
    budget = RestartBudget(restarts=[100.0] * MAX_RESTARTS)
    assert budget.delay(101.0) is None
    assert budget.delay(100.0 + WINDOW) == FIRST_DELAY
