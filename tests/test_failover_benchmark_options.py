"""The failover benchmark's command line (benchmarks/failover_recovery.py): its options are
checked before anything is started, and the verdicts it prints and records (issue 12's targets,
per fault and mode). Not for the measurements (those are the benchmark's own)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from rich.console import Console
from typer.testing import CliRunner

from benchmarks import failover_recovery
from benchmarks.failover_recovery import PHASES, app, render, targets_for, verdicts
from benchmarks.primary_faults import Fault


def test_a_fault_other_than_kill_pause_or_partition_is_refused_naming_the_choices() -> None:
    result = CliRunner().invoke(app, ["--fault", "stall"])
    assert result.exit_code == 2
    assert "--fault" in result.output
    assert all(f"'{name}'" in result.output for name in ("kill", "pause", "partition"))


# -- the verdicts: issue 12's targets, per fault and mode -------------------------------------


def summary(p50: float, p95: float) -> dict[str, dict]:
    return {"total": {"n": 10, "p50": p50, "p95": p95, "max": p95}}


def test_a_quiet_kill_is_judged_against_150_ms_at_p50_and_300_ms_at_p95() -> None:
    verdict = verdicts(summary(0.2, 0.25), targets_for(Fault.kill, busy=False), None)
    assert (verdict["p50_met"], verdict["p95_met"]) == (False, True)


def test_a_busy_kill_is_judged_against_1_s_at_p95_and_no_p50() -> None:
    verdict = verdicts(summary(0.5, 0.8), targets_for(Fault.kill, busy=True), None)
    assert (verdict["p50_met"], verdict["p95_met"]) == (None, True)


@pytest.mark.parametrize("fault", [Fault.pause, Fault.partition])
def test_a_stall_or_a_cut_is_judged_against_1_5_s_at_p50_and_2_5_s_at_p95(fault: Fault) -> None:
    verdict = verdicts(summary(1.4, 2.7), targets_for(fault, busy=False), None)
    assert (verdict["p50_met"], verdict["p95_met"]) == (True, False)


def test_a_kill_is_judged_by_its_ratio_to_sentinel_against_a_tenth() -> None:
    targets = targets_for(Fault.kill, busy=False)
    assert verdicts(summary(0.1, 0.2), targets, 0.09)["sentinel_ratio_met"] is True
    assert verdicts(summary(0.1, 0.2), targets, 0.12)["sentinel_ratio_met"] is False


def test_a_stall_has_no_ratio_to_sentinel_to_meet() -> None:
    verdict = verdicts(summary(1.4, 2.0), targets_for(Fault.pause, busy=False), 0.5)
    assert verdict["sentinel_ratio_met"] is None


def test_the_printed_verdict_names_the_target_of_the_fault_and_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets = targets_for(Fault.kill, busy=True)
    totals = summary(0.5, 0.8)
    document = {
        "fault": "kill",
        "busy": True,
        "targets": asdict(targets),
        "ratequeue": {
            "redis": {
                "kills": [],
                "summary": {name: {"n": 0, "p50": 0.0, "p95": 0.0, "max": 0.0} for name in PHASES}
                | totals,
                "verdict": verdicts(totals, targets, 0.2),
                "ratio_to_sentinel_p50": 0.2,
            }
        },
        "sentinel": {"kills": [], "summary": {"total": {"n": 0, "p50": 2.5}}},
    }
    recording = Console(record=True, width=200)
    monkeypatch.setattr(failover_recovery, "console", recording)
    render(document)
    printed = recording.export_text()
    assert "redis, both cores busy: p50 500 ms; p95 800 ms <= 1,000: met" in printed
    assert "<= 0.10: missed" in printed
