"""The CI scenario suite: every experiment in scenarios/ runs on its own embedded local testbed
(real redis-server processes, sensors, three controllers) and must pass its hypotheses. The runs
are the session's `scenario_journal` ones: tests/test_scenarios_on_both_managers.py asserts more
on the same primary_partition run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ScenarioRun

# A scenario whose expectation the code does not meet yet runs anyway, as a strict xfail: it
# shows in every run, and the day it passes the suite fails until the mark is removed.
NOT_MET_YET: dict[str, str] = {}
SCENARIOS = [
    pytest.param(
        path,
        id=path.stem,
        marks=[pytest.mark.xfail(reason=NOT_MET_YET[path.stem], strict=True)]
        if path.stem in NOT_MET_YET
        else [],
    )
    for path in sorted((Path(__file__).parents[1] / "scenarios").glob("*.yaml"))
]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", SCENARIOS)
def test_the_scenario_passes_on_the_embedded_testbed(
    path: Path, scenario_journal: ScenarioRun
) -> None:
    journal, journal_dir = scenario_journal(path)
    failed = [h for h in journal.hypotheses if not h.ok]
    assert journal.verdict == "passed", (journal.errors, failed, journal.steady_state_after)
    assert (journal_dir / f"{journal.run_id}.json").exists()
