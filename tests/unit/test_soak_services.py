"""The soak's service kills, the parts without an engine: which container each cycle kills,
what `--kill-services` accepts, and which hypotheses a cycle that kills the API leaves out.

Not for: a real kill and restart (tests/test_staging_soak.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.soak import NOT_JUDGED_WITHOUT_API, experiment_of_cycle
from chaos.soak_services import parse_services, service_of_cycle

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_cycles_kill_the_listed_services_in_turn_and_each_controller_in_turn() -> None:
    services = ["api", "controller"]
    killed = [service_of_cycle(cycle, services) for cycle in range(1, 9)]
    assert killed == ["api", "lazarus1", "api", "lazarus2", "api", "lazarus3", "api", "lazarus1"]


def test_without_services_no_cycle_kills_one() -> None:
    assert service_of_cycle(1, []) is None


def test_kill_services_names_what_it_accepts_when_given_something_else() -> None:
    with pytest.raises(ValueError, match="sensor: expected a comma-separated list of api"):
        parse_services("api,sensor")


def test_a_cycle_that_kills_the_api_does_not_judge_what_it_measures_through_the_api() -> None:
    plain = experiment_of_cycle(SCENARIOS, "kill", "primary", "s1")
    without_api = experiment_of_cycle(SCENARIOS, "kill", "primary", "s1", api_away_up_to=60)
    kept = [h.type for h in without_api.hypotheses]
    assert "other_shards_availability" in [h.type for h in plain.hypotheses]
    assert not NOT_JUDGED_WITHOUT_API & set(kept)
    assert kept == [h.type for h in plain.hypotheses if h.type not in NOT_JUDGED_WITHOUT_API]
    assert "acknowledged_lost" in kept


def test_a_cycle_that_kills_the_api_drains_as_long_longer_as_the_api_may_be_away() -> None:
    plain = experiment_of_cycle(SCENARIOS, "kill", "primary", "s1")
    without_api = experiment_of_cycle(SCENARIOS, "kill", "primary", "s1", api_away_up_to=60)
    assert without_api.load.drain_seconds == plain.load.drain_seconds + 60
