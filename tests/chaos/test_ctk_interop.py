"""Chaos Toolkit interop without a testbed: our journals exported in the shape chaoslib writes
(compared with a journal the real `chaostoolkit run` wrote) and read back, CTK journals in the
report, the two CLIs side by side in one venv, and the extension refusing bad arguments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
from chaoslib.activity import ensure_activity_is_valid, run_activity
from chaoslib.experiment import ensure_experiment_is_valid
from chaoslib.hypothesis import run_steady_state_hypothesis, within_tolerance
from chaoslib.run import (
    EventHandlerRegistry,
    has_steady_state_hypothesis_with_probes,
    run_deviation_validation_hypothesis,
    run_gate_hypothesis,
)
from typer.testing import CliRunner

from chaos.cli import app
from chaos.comparison import manager_of
from chaos.ctk import actions, probes
from chaos.ctk.journals import from_ctk, is_ctk_journal, to_ctk
from chaos.errors import ExperimentError, TargetError
from chaos.journal import HypothesisOutcome, Journal, ProbeOutcome, read_journals
from chaos.report import MAX_TICKS, timeline_svg, write_report

ROOT = Path(__file__).parents[2]
SCRIPTS = Path(sysconfig.get_path("scripts"))

EXISTS = {"type": "python", "module": "os.path", "func": "exists", "arguments": {"path": "."}}
TRIVIAL_EXPERIMENT = {
    "title": "the working directory exists",
    "description": "a run of the real chaostoolkit that needs no testbed",
    "steady-state-hypothesis": {
        "title": "it exists",
        "probes": [{"type": "probe", "name": "exists", "tolerance": True, "provider": EXISTS}],
    },
    "method": [{"type": "action", "name": "look", "provider": EXISTS}],
    "rollbacks": [{"type": "action", "name": "look-again", "provider": EXISTS}],
}


# A steady-state probe that raises (its file does not exist), as chaoslib runs one.
RAISING_EXPERIMENT = {
    **TRIVIAL_EXPERIMENT,
    "steady-state-hypothesis": {
        "title": "it raises",
        "probes": [
            {"type": "probe", "name": "size", "tolerance": 0,
             "provider": {"type": "python", "module": "os.path", "func": "getsize",
                          "arguments": {"filename": "/nonexistent/steady-state"}}}
        ],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def chaostoolkit_journal(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A journal exactly as `chaostoolkit run` writes it."""
    directory = tmp_path_factory.mktemp("ctk")
    (directory / "experiment.json").write_text(json.dumps(TRIVIAL_EXPERIMENT))
    subprocess.run(
        [str(SCRIPTS / "chaos"), "--no-version-check", "--no-log-file", "run",
         "--journal-path", "journal.json", "experiment.json"],
        cwd=directory, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return json.loads((directory / "journal.json").read_text())


@pytest.fixture(scope="module")
def chaostoolkit_journal_of_a_steady_state_not_met(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """A journal as `chaostoolkit run` writes it when the steady state does not hold before
    the method (its probe answers, out of tolerance)."""
    directory = tmp_path_factory.mktemp("ctk-not-met")
    experiment = json.loads(json.dumps(TRIVIAL_EXPERIMENT))
    experiment["steady-state-hypothesis"]["probes"][0]["tolerance"] = False
    (directory / "experiment.json").write_text(json.dumps(experiment))
    subprocess.run(
        [str(SCRIPTS / "chaos"), "--no-version-check", "--no-log-file", "run",
         "--journal-path", "journal.json", "experiment.json"],
        cwd=directory, check=False, capture_output=True, timeout=120,
    )  # fmt: skip
    return json.loads((directory / "journal.json").read_text())


def a_run(verdict: str = "passed") -> Journal:
    """One of our journals: a primary killed at t=100, writes again at 101.5, all measured."""
    journal = Journal(
        run_id="20261203T031621-kill-a-shard-primary-under-load",
        experiment="Kill a shard primary under load",
        deployment="local-testbed",
        environment="dev",
        started_at=95.0,
        ended_at=130.0,
        status="completed",
        verdict=verdict,
        shard="s1",
        steady_state_before=[ProbeOutcome(probe="api_healthy", ok=True, detail="all pass")],
        steady_state_after=[ProbeOutcome(probe="api_healthy", ok=True, detail="all pass")],
        plan=["deployment local-testbed (dev); shard s1", "t+3s kill primary of s1 via local"],
        faults=[{"action": "pause", "target": "s1-primary", "role": "primary", "shard": "s1",
                 "backend": "local", "injected_at": 100.0, "rolled_back_at": 104.0,
                 "rollback_error": None, "details": {"pid": 4242}}],
        hypotheses=[
            HypothesisOutcome(hypothesis="acknowledged_lost", ok=verdict == "passed",
                              expected="<= 0 (of > 0 acknowledged)",
                              measured=0 if verdict == "passed" else 3),
            HypothesisOutcome(hypothesis="one_workflow_per_incident", ok=True,
                              expected="one workflow", measured={"workflows": {}}),
        ],
        load={"acknowledged": 400, "lost": 0},
    )  # fmt: skip
    journal.mark("fault_injected", 100.0, 100.0, "pause s1-primary via local")
    journal.mark("first_acknowledged_write", 101.5, 100.0, "s1")
    return journal


def an_aborted_run(*before: ProbeOutcome) -> Journal:
    """A run whose steady state did not hold before the fault: nothing was touched."""
    journal = a_run()
    journal.status, journal.verdict = "aborted", "aborted"
    journal.steady_state_before = list(before)
    journal.steady_state_after, journal.faults, journal.hypotheses = [], [], []
    journal.timeline, journal.load = [], {}
    return journal


def a_sentinel_run(*before: ProbeOutcome) -> Journal:
    """A passed run under Sentinel: no Lazarus controllers to check, no workflow to judge."""
    journal = a_run()
    journal.failover = "sentinel"
    no_controllers = ProbeOutcome(
        probe="controllers_healthy", ok=False, detail="", skipped="no Lazarus controllers"
    )
    journal.steady_state_before = [*before, no_controllers]
    journal.steady_state_after = [*before, no_controllers]
    journal.hypotheses[-1] = HypothesisOutcome(
        hypothesis="one_workflow_per_incident", ok=False, expected="(not judged)",
        measured=None, skipped="Lazarus runs workflows; failover is sentinel",
    )  # fmt: skip
    return journal


def shape(value: Any) -> Any:
    """Keys and value types, recursively (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_an_exported_journal_has_every_key_chaostoolkit_writes_with_the_same_types(
    chaostoolkit_journal: dict[str, Any],
) -> None:
    reference, exported = shape(chaostoolkit_journal), shape(to_ctk(a_run()))
    for key, kind in reference.items():
        if key in {"experiment", "steady_states", "run", "rollbacks"}:
            continue
        assert exported[key] == kind, key
    for stage in ("before", "after"):
        assert set(exported["steady_states"][stage]) == set(reference["steady_states"][stage])
        probe, ours = (
            reference["steady_states"][stage]["probes"][0],
            exported["steady_states"][stage]["probes"][0],
        )
        assert set(ours) == set(probe)
        assert {k: ours[k] for k in probe if k not in {"activity", "output"}} == {
            k: v for k, v in probe.items() if k not in {"activity", "output"}
        }
    for part in ("run", "rollbacks"):
        assert set(exported[part][0]) == set(reference[part][0]), part
        assert set(exported[part][0]["activity"]) == set(reference[part][0]["activity"]), part


def test_the_exported_experiment_is_one_chaostoolkit_accepts() -> None:
    exported = to_ctk(a_run())
    ensure_experiment_is_valid(exported["experiment"])  # raises InvalidExperiment otherwise
    [fault] = exported["experiment"]["method"]
    assert fault["provider"]["module"] == "chaos.ctk.actions"
    assert fault["provider"]["arguments"]["action"] == "pause"


def test_a_passed_run_exports_as_completed_not_deviated_and_reads_back_the_same() -> None:
    exported = to_ctk(a_run())
    assert (exported["status"], exported["deviated"]) == ("completed", False)
    back = from_ctk(exported, Path("run.ctk.json"))
    assert (back.experiment, back.verdict, back.shard) == (
        "Kill a shard primary under load", "passed", "s1",
    )  # fmt: skip
    assert back.recovery_seconds() == pytest.approx(1.5)
    assert back.faults[0]["rolled_back_at"] == 104.0
    # CTK's steady state after the method is its hypothesis: our after-probes are judged too.
    assert [h.hypothesis for h in back.hypotheses] == [
        "api_healthy", "acknowledged_lost", "one_workflow_per_incident",
    ]  # fmt: skip


def test_a_failed_run_exports_as_deviated_and_reads_back_as_failed() -> None:
    exported = to_ctk(a_run("failed"))
    assert (exported["status"], exported["deviated"]) == ("completed", True)
    lost = next(p for p in exported["steady_states"]["after"]["probes"]
                if p["activity"]["name"] == "acknowledged_lost")  # fmt: skip
    assert (lost["output"], lost["tolerance_met"]) == (3, False)
    assert from_ctk(exported, Path("run.ctk.json")).verdict == "failed"


@pytest.mark.parametrize("verdict", ["passed", "failed"])
def test_an_exported_hypothesis_with_a_probe_is_judged_by_chaoslib_as_we_judged_it(
    verdict: str,
) -> None:
    after = to_ctk(a_run(verdict))["steady_states"]["after"]["probes"]
    lost = next(p for p in after if p["activity"]["name"] == "acknowledged_lost")
    assert lost["activity"]["provider"]["module"] == "chaos.ctk.probes"
    assert lost["activity"]["tolerance"] == 0
    assert within_tolerance(lost["activity"]["tolerance"], lost["output"]) is lost["tolerance_met"]


def test_an_exported_hypothesis_no_probe_measures_is_a_probe_chaoslib_accepts() -> None:
    after = to_ctk(a_run())["steady_states"]["after"]["probes"]
    for probe in after:
        ensure_activity_is_valid(probe["activity"])  # raises InvalidActivity otherwise
    workflows = next(p for p in after if p["activity"]["name"] == "one_workflow_per_incident")
    assert workflows["activity"]["provider"]["func"] == "judged"


@pytest.mark.parametrize("verdict", [True, False])
def test_an_exported_hypothesis_no_probe_measures_returns_our_verdict_when_chaoslib_runs_it(
    verdict: bool,
) -> None:
    run = a_run()
    run.hypotheses[-1].ok = verdict
    after = to_ctk(run)["steady_states"]["after"]["probes"]
    record = next(p for p in after if p["activity"]["name"] == "one_workflow_per_incident")
    output = run_activity(record["activity"], {}, {})
    assert output == record["output"]
    assert within_tolerance(record["activity"]["tolerance"], output) is verdict


def test_an_exported_hypothesis_no_probe_measures_reads_back_as_we_recorded_it() -> None:
    [*_, workflows] = from_ctk(to_ctk(a_run()), Path("run.ctk.json")).hypotheses
    assert (workflows.hypothesis, workflows.ok, workflows.expected, workflows.measured) == (
        "one_workflow_per_incident", True, "one workflow", {"workflows": {}},
    )  # fmt: skip


def test_a_timed_fault_exports_its_duration_as_the_actions_seconds() -> None:
    run = a_run()
    run.faults[0]["details"]["duration"] = 5.0
    [fault] = to_ctk(run)["experiment"]["method"]
    assert fault["provider"]["arguments"]["seconds"] == 5.0


def test_a_chaostoolkit_run_failed_by_a_probe_that_raised_reads_as_aborted_with_the_error(
    chaostoolkit_journal: dict[str, Any],
) -> None:
    # A probe that raised before the method: chaoslib (`run_gate_hypothesis`) writes failed,
    # not deviated, and runs nothing after it (one raising after the method deviates).
    raw = json.loads(json.dumps(chaostoolkit_journal))
    raw["steady_states"]["after"], raw["run"], raw["rollbacks"] = None, [], []
    run_gate_hypothesis(RAISING_EXPERIMENT, raw, {}, {}, EventHandlerRegistry(), None)
    assert (raw["status"], raw["deviated"]) == ("failed", False)
    journal = from_ctk(raw, Path("journal.json"))
    assert journal.verdict == "aborted"
    assert any(e.startswith("size: ") and "FileNotFoundError" in e for e in journal.errors), (
        journal.errors
    )


def test_the_report_charts_a_chaostoolkit_journal_next_to_ours(
    chaostoolkit_journal: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "journal.json").write_text(json.dumps(chaostoolkit_journal))
    a_run("failed").write(tmp_path)
    assert is_ctk_journal(chaostoolkit_journal)
    journals = read_journals(tmp_path)
    assert {(j.experiment, j.verdict) for j in journals} == {
        ("the working directory exists", "passed"),
        ("Kill a shard primary under load", "failed"),
    }
    html, markdown = write_report(tmp_path)
    assert "the working directory exists" in html.read_text()
    assert "| the working directory exists |" in markdown.read_text()


def test_export_journal_writes_the_ctk_shape_and_refuses_a_file_that_is_not_a_journal(
    tmp_path: Path,
) -> None:
    path = a_run().write(tmp_path)
    output = tmp_path / "run.ctk.json"
    done = CliRunner().invoke(app, ["export-journal", str(path), "--output", str(output)])
    assert done.exit_code == 0, done.output
    assert is_ctk_journal(json.loads(output.read_text()))
    other = tmp_path / "other.json"
    other.write_text('{"title": "not a run"}')
    refused = CliRunner().invoke(app, ["export-journal", str(other)])
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())  # the console wraps long lines
    assert "not a chaos run journal" in said and "run_id" in said


def test_chaos_is_chaos_toolkits_command_and_ratequeue_chaos_is_ours_in_one_venv() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "chaos" not in scripts and scripts["ratequeue-chaos"] == "chaos.cli:app"
    theirs = subprocess.run([str(SCRIPTS / "chaos"), "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert theirs.returncode == 0 and "chaostoolkit" in theirs.stdout, theirs
    assert "testbed" not in theirs.stdout
    ours = subprocess.run([str(SCRIPTS / "ratequeue-chaos"), "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert ours.returncode == 0 and "testbed" in ours.stdout and "export-journal" in ours.stdout


def test_chaostoolkits_discover_lists_the_extensions_actions_and_probes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, whatever the venv points at
    subprocess.run(
        [str(SCRIPTS / "chaos"), "--no-version-check", "--no-log-file", "discover", "--no-install",
         "--no-system-info", "ratequeue-testbed"],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    discovery = json.loads((tmp_path / "discovery.json").read_text())
    assert discovery["extension"]["name"] == "chaos.ctk"
    found = {(a["type"], a["mod"], a["name"]) for a in discovery["activities"]}
    assert found == {("action", "chaos.ctk.actions", name) for name in actions.__all__} | {
        ("probe", "chaos.ctk.probes", name) for name in probes.__all__
    }
    kill = next(a for a in discovery["activities"] if a["name"] == "kill")
    assert {"name": "role", "default": "primary", "type": "string"} in kill["arguments"]


def test_an_activity_without_the_deployment_in_its_configuration_names_the_key() -> None:
    with pytest.raises(TargetError, match="ratequeue_deployment"):
        probes.api_healthy(configuration={})
    with pytest.raises(TargetError, match="does not exist"):
        probes.api_healthy(configuration={"ratequeue_deployment": "/nonexistent/testbed.json"})


def test_a_fault_with_a_bad_selector_is_refused_naming_the_field_before_anything_is_opened() -> (
    None
):
    with pytest.raises(ExperimentError, match="role"):
        actions.kill(role="primry", configuration={"ratequeue_deployment": "/nonexistent"})


def test_a_run_whose_every_steady_state_probe_was_skipped_exports_no_steady_state_hypothesis() -> (
    None
):
    exported = to_ctk(a_sentinel_run())
    assert not has_steady_state_hypothesis_with_probes(exported["experiment"])
    assert exported["steady_states"]["before"] is None
    assert (exported["status"], exported["deviated"]) == ("completed", False)
    assert from_ctk(exported, Path("run.ctk.json")).verdict == "passed"


def test_skipped_probes_and_hypotheses_are_left_out_of_the_exported_steady_states() -> None:
    healthy = ProbeOutcome(probe="api_healthy", ok=True, detail="all pass")
    exported = to_ctk(a_sentinel_run(healthy))
    before, after = exported["steady_states"]["before"], exported["steady_states"]["after"]
    assert [p["activity"]["name"] for p in before["probes"]] == ["api_healthy"]
    assert [p["activity"]["name"] for p in after["probes"]] == ["api_healthy", "acknowledged_lost"]
    assert before["steady_state_met"] is after["steady_state_met"] is True
    assert from_ctk(exported, Path("run.ctk.json")).verdict == "passed"


def test_a_steady_state_not_met_before_the_method_exports_as_chaostoolkit_writes_it(
    chaostoolkit_journal_of_a_steady_state_not_met: dict[str, Any],
) -> None:
    reference = chaostoolkit_journal_of_a_steady_state_not_met
    unhealthy = ProbeOutcome(probe="api_healthy", ok=False, detail="failing checks: ['redis']")
    exported = to_ctk(an_aborted_run(unhealthy))

    def outcome(journal: dict[str, Any]) -> tuple[Any, ...]:
        states = journal["steady_states"]
        return (journal["status"], journal["deviated"], states["before"]["steady_state_met"],
                states["after"], journal["run"])  # fmt: skip

    assert outcome(exported) == outcome(reference) == ("completed", False, False, None, [])
    assert from_ctk(exported, Path("run.ctk.json")).verdict == "aborted"


def test_an_exported_probe_out_of_tolerance_has_the_keys_chaostoolkit_writes_no_exception(
    chaostoolkit_journal_of_a_steady_state_not_met: dict[str, Any],
) -> None:
    [reference] = chaostoolkit_journal_of_a_steady_state_not_met["steady_states"]["before"][
        "probes"
    ]
    unhealthy = ProbeOutcome(probe="api_healthy", ok=False, detail="failing checks: ['redis']")
    [probe] = to_ctk(an_aborted_run(unhealthy))["steady_states"]["before"]["probes"]
    assert set(probe) == set(reference)
    assert (probe["status"], probe["tolerance_met"]) == ("succeeded", False)


def test_an_exported_hypothesis_not_met_has_no_exception_only_a_failed_run_has_one() -> None:
    run = a_run("failed")
    run.hypotheses[0].detail = "3 of 400 acknowledged were never delivered"
    exported = to_ctk(run)
    entries = [*exported["steady_states"]["after"]["probes"], *exported["run"],
               *exported["rollbacks"]]  # fmt: skip
    assert all("exception" not in entry for entry in entries if entry["status"] != "failed")


def test_an_exported_steady_state_stops_at_its_first_probe_not_met_as_chaoslib_does() -> None:
    probes = [
        {"type": "probe", "name": name, "tolerance": tolerance, "provider": EXISTS}
        for name, tolerance in (("api_healthy", False), ("replicas_attached", True))
    ]
    experiment = {**TRIVIAL_EXPERIMENT,
                  "steady-state-hypothesis": {"title": "two probes", "probes": probes}}  # fmt: skip
    theirs = run_steady_state_hypothesis(
        experiment, {}, {}, dry=None, event_registry=EventHandlerRegistry()
    )
    ours = to_ctk(
        an_aborted_run(
            ProbeOutcome(probe="api_healthy", ok=False, detail="failing checks: ['redis']"),
            ProbeOutcome(probe="replicas_attached", ok=True, detail="all follow"),
        )
    )["steady_states"]["before"]

    def listed(state: dict[str, Any]) -> tuple[Any, ...]:
        return state["steady_state_met"], [p["activity"]["name"] for p in state["probes"]]

    assert listed(ours) == listed(theirs) == (False, ["api_healthy"])


def test_an_exported_after_steady_state_stops_at_the_first_hypothesis_not_met() -> None:
    run = a_run("failed")  # acknowledged_lost not met, one_workflow_per_incident met after it
    after = to_ctk(run)["steady_states"]["after"]
    assert [p["activity"]["name"] for p in after["probes"]] == ["api_healthy", "acknowledged_lost"]
    assert from_ctk(to_ctk(run), Path("run.ctk.json")).verdict == "failed"


def test_the_report_charts_exported_journals_with_the_verdicts_of_the_runs(tmp_path: Path) -> None:
    unhealthy = ProbeOutcome(probe="api_healthy", ok=False, detail="failing checks: ['redis']")
    runs = {"sentinel": a_sentinel_run(), "failed": a_run("failed"),
            "aborted": an_aborted_run(unhealthy)}  # fmt: skip
    for name, run in runs.items():
        run.experiment = name
        (tmp_path / f"{name}.ctk.json").write_text(json.dumps(to_ctk(run)))
    assert {(j.experiment, j.verdict) for j in read_journals(tmp_path)} == {
        ("sentinel", "passed"), ("failed", "failed"), ("aborted", "aborted"),
    }  # fmt: skip
    html, _ = write_report(tmp_path)
    assert all(name in html.read_text() for name in runs)


def test_a_chaostoolkit_run_whose_probe_raised_after_the_method_reads_as_failed(
    chaostoolkit_journal: dict[str, Any],
) -> None:
    raw = json.loads(json.dumps(chaostoolkit_journal))
    run_deviation_validation_hypothesis(
        RAISING_EXPERIMENT, raw, {}, {}, EventHandlerRegistry(), None
    )
    assert (raw["status"], raw["deviated"]) == ("failed", True)  # as chaoslib writes it
    assert from_ctk(raw, Path("journal.json")).verdict == "failed"


@pytest.mark.parametrize(
    ("hypothesis", "expected"),
    [
        ("acknowledged_lost", "<= 0 (of > 0 acknowledged)"),
        ("duplicates", "<= 0 (of > 0 deliveries)"),
    ],
)
def test_a_hypothesis_of_nothing_delivered_exports_a_probe_chaoslib_judges_not_met(
    hypothesis: str, expected: str
) -> None:
    # chaos/hypotheses.py: nothing acknowledged (delivered) proves nothing, so not ok at 0.
    run = a_run()
    run.hypotheses[0] = HypothesisOutcome(
        hypothesis=hypothesis, ok=False, expected=expected, measured=0
    )
    after = to_ctk(run)["steady_states"]["after"]["probes"]
    probe = next(p for p in after if p["activity"]["name"] == hypothesis)
    output = run_activity(probe["activity"], {}, {})
    assert output == probe["output"]
    assert within_tolerance(probe["activity"]["tolerance"], output) is probe["tolerance_met"]
    assert probe["tolerance_met"] is False
    back = next(h for h in from_ctk(to_ctk(run), Path("r.json")).hypotheses
                if h.hypothesis == hypothesis)  # fmt: skip
    assert (back.ok, back.measured, back.expected) == (False, 0, expected)


def test_a_run_that_errored_with_a_failed_verdict_reads_back_failed() -> None:
    run = a_run("failed")
    # chaos/runner.py: an exception in the run; nothing concluded, no hypothesis judged.
    run.status, run.steady_state_after, run.hypotheses = "error", [], []
    exported = to_ctk(run)
    assert (exported["status"], exported["deviated"]) == ("failed", False)
    back = from_ctk(exported, Path("run.ctk.json"))
    assert (back.status, back.verdict) == ("error", "failed")


def test_what_follows_the_first_probe_not_met_reads_back_with_the_runs_figures(
    tmp_path: Path,
) -> None:
    run = a_run("failed")
    run.steady_state_after = [ProbeOutcome(probe="replicas_attached", ok=False, detail="none")]
    run.load = {"acknowledged": 400, "lost": 3}
    exported = to_ctk(run)
    after = exported["steady_states"]["after"]
    assert [p["activity"]["name"] for p in after["probes"]] == ["replicas_attached"]
    back = from_ctk(exported, Path("run.ctk.json"))
    assert [(h.hypothesis, h.ok, h.measured) for h in back.hypotheses] == [
        ("replicas_attached", False, False), ("acknowledged_lost", False, 3),
        ("one_workflow_per_incident", True, {"workflows": {}}),
    ]  # fmt: skip
    assert back.load == run.load
    (tmp_path / "run.ctk.json").write_text(json.dumps(exported))
    _, markdown = write_report(tmp_path)
    assert "| failed | 1.50 | 400 | 3 |" in markdown.read_text()


def test_a_failed_run_with_every_hypothesis_skipped_exports_not_deviated_reads_back_failed() -> (
    None
):
    run = a_run("failed")
    for outcome in run.hypotheses:
        outcome.ok, outcome.skipped = False, "not observable here"
    exported = to_ctk(run)
    assert exported["steady_states"]["after"]["steady_state_met"] is True
    assert (exported["status"], exported["deviated"]) == ("completed", False)
    assert from_ctk(exported, Path("run.ctk.json")).verdict == "failed"


def test_a_run_without_a_steady_state_hypothesis_exports_no_after_steady_state() -> None:
    exported = to_ctk(a_sentinel_run())
    assert not has_steady_state_hypothesis_with_probes(exported["experiment"])
    assert exported["steady_states"]["after"] is None  # chaoslib runs no stage it has no probes for
    back = from_ctk(exported, Path("run.ctk.json"))
    assert [(h.hypothesis, h.ok, h.measured) for h in back.hypotheses] == [
        ("acknowledged_lost", True, 0)
    ]


def test_an_exported_run_reads_back_its_failover_manager_ack_timers_and_measures() -> None:
    run = a_sentinel_run()
    run.ack, run.sentinel_timers = "async", {"down_after_ms": 2000, "failover_timeout_ms": 6000}
    run.measures = {"earliest_delivery_before_rate_seconds": 0.5,
                    "primaries_answering": {"s1": ["s1-replica1"]}}  # fmt: skip
    back = from_ctk(to_ctk(run), Path("run.ctk.json"))
    assert (back.failover, back.ack, back.sentinel_timers, back.measures) == (
        "sentinel", "async", run.sentinel_timers, run.measures,
    )  # fmt: skip
    assert manager_of(back) == "sentinel, ack async"


def test_an_export_written_before_the_manager_was_carried_reads_as_lazarus_without_ack() -> None:
    exported = to_ctk(a_run())
    for key in ("failover", "ack", "sentinel_timers", "measures"):
        exported["ratequeue"].pop(key)
    back = from_ctk(exported, Path("run.ctk.json"))
    assert (back.failover, back.ack, back.sentinel_timers, back.measures) == (
        "lazarus", None, None, {},
    )  # fmt: skip
    assert back.verdict == "passed"


JUDGED = {"module": "chaos.ctk.journals", "func": "judged"}


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("verdict", ["failed"], "ratequeue.verdict"),
        ("failover", "consul", "ratequeue.failover"),
        ("ack", "sometimes", "ratequeue.ack"),
        ("measures", {"primaries_answering": ["s1-primary"]},
         "ratequeue.measures.primaries_answering"),
        ("load", {"undelivered_whereabouts": {"held": 1}},
         "ratequeue.load.undelivered_whereabouts.gone"),
        ("load", {"lost": "many"}, "ratequeue.load.lost"),
        ("after_unlisted", "oops", "ratequeue.after_unlisted"),
        ("after_unlisted", {}, "ratequeue.after_unlisted"),
        ("after_unlisted", [1], "ratequeue.after_unlisted.0"),
        ("after_unlisted", [{}], "ratequeue.after_unlisted.0.activity"),
        ("after_unlisted",
         [{"activity": {"name": "x", "provider": {**JUDGED, "arguments": {"expected": 5}}}}],
         "ratequeue.after_unlisted.0.activity.provider.arguments.expected"),
    ],
)  # fmt: skip
def test_a_ratequeue_block_of_the_wrong_type_is_refused_naming_the_field(
    key: str, value: Any, field: str
) -> None:
    exported = to_ctk(a_run("failed"))
    exported["ratequeue"][key] = value
    with pytest.raises(ValueError, match=rf"run\.ctk\.json: field '{re.escape(field)}'"):
        from_ctk(exported, Path("run.ctk.json"))


def test_the_report_names_a_journal_it_could_not_read_and_charts_the_others(
    tmp_path: Path,
) -> None:
    bad = to_ctk(a_run("failed"))
    bad["ratequeue"]["load"] = {"undelivered_whereabouts": {"held": 1}}
    (tmp_path / "bad.ctk.json").write_text(json.dumps(bad))
    (tmp_path / "good.ctk.json").write_text(json.dumps(to_ctk(a_sentinel_run())))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "bad.ctk.json: field 'ratequeue.load.undelivered_whereabouts.gone'" in said
    summary = (tmp_path / "report.md").read_text()
    assert "bad.ctk.json: field 'ratequeue.load.undelivered_whereabouts.gone'" in summary
    assert "1 runs, 1 passed." in summary  # the good one is charted, the bad one only named
    assert "bad.ctk.json" in (tmp_path / "report.html").read_text()


def test_read_journals_names_a_journal_of_ours_it_cannot_read_not_other_json(
    tmp_path: Path,
) -> None:
    ours = json.loads(a_run().model_dump_json())
    ours["verdict"] = "FAILED"
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    (tmp_path / "settings.json").write_text(json.dumps({"colour": "red"}))
    unreadable: list[str] = []
    assert read_journals(tmp_path, unreadable) == []
    assert len(unreadable) == 1
    assert unreadable[0].startswith(f"{tmp_path / 'ours.json'}: field 'verdict'")


@pytest.mark.parametrize("status", ["interrupted", "aborted"])
def test_a_run_stopped_during_the_method_exports_no_after_steady_state_nor_deviated(
    status: str,
) -> None:
    run = a_run("failed")
    run.status = status  # chaoslib runs no steady state after the method for either
    exported = to_ctk(run)
    assert (exported["status"], exported["deviated"]) == (status, False)
    assert exported["steady_states"]["after"] is None
    back = from_ctk(exported, Path("run.ctk.json"))
    assert (back.status, back.verdict) == (status, "failed")
    # Still measured: carried in our extension, read back.
    assert [(h.hypothesis, h.ok) for h in back.hypotheses] == [
        ("api_healthy", True), ("acknowledged_lost", False), ("one_workflow_per_incident", True),
    ]  # fmt: skip


DROP = object()  # `edited`: remove the key


def edited(journal: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A copy of `journal` with the value at `path` replaced (DROP: removed), as by hand."""
    copy = json.loads(json.dumps(journal))
    *parents, last = path
    place = copy
    for key in parents:
        place = place[key]
    if value is DROP:
        del place[last]
    else:
        place[last] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("steady_states", "before"), "x", "steady_states.before"),
        (("steady_states", "after", "probes"), {}, "steady_states.after.probes"),
        (("steady_states", "before", "probes", 0, "activity"), None,
         "steady_states.before.probes.0.activity"),
        (("run", 0), "look", "run.0"),
        (("run", 0, "activity"), DROP, "run.0.activity"),
        (("run", 0, "start"), DROP, "run.0.start"),
        (("run", 0, "activity", "name"), 5, "run.0.activity.name"),
        (("rollbacks", 0, "status"), "ok", "rollbacks.0.status"),
        (("rollbacks", 0, "exception"), "boom", "rollbacks.0.exception"),
        (("rollbacks",), {}, "rollbacks"),
        (("status",), "done", "status"),
        (("experiment", "title"), ["a"], "experiment.title"),
    ],
)  # fmt: skip
def test_a_chaostoolkit_journal_of_the_wrong_shape_is_refused_naming_the_field(
    chaostoolkit_journal: dict[str, Any], path: tuple[str | int, ...], value: Any, field: str
) -> None:
    bad = edited(chaostoolkit_journal, path, value)
    with pytest.raises(ValueError, match=rf"^journal\.json: field '{re.escape(field)}': "):
        from_ctk(bad, Path("journal.json"))


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("start",), "yesterday", "start"),
        (("end",), 1733350279, "end"),
        (("steady_states", "before", "probes", 0, "start"), "noon",
         "steady_states.before.probes.0.start"),
    ],
)  # fmt: skip
def test_a_time_that_is_not_an_iso_time_is_refused_saying_what_was_expected(
    chaostoolkit_journal: dict[str, Any], path: tuple[str | int, ...], value: Any, field: str
) -> None:
    bad = edited(chaostoolkit_journal, path, value)
    with pytest.raises(ValueError) as refused:
        from_ctk(bad, Path("journal.json"))
    said = str(refused.value)
    assert said.startswith(f"journal.json: field '{field}': must be an ISO 8601 time"), said
    assert repr(value) in said


@pytest.mark.parametrize("key", ["target", "injected_at", "action"])
def test_a_fault_our_action_returned_without_a_key_the_report_shows_is_refused_naming_it(
    key: str,
) -> None:
    exported = to_ctk(a_run())
    assert exported["run"][0]["activity"]["provider"]["func"] == "inject"
    del exported["run"][0]["output"][0][key]
    with pytest.raises(ValueError, match=rf"^run\.ctk\.json: field 'run\.0\.output\.0\.{key}'"):
        from_ctk(exported, Path("run.ctk.json"))


def test_a_recovery_time_that_is_not_a_number_is_refused_not_charted() -> None:
    exported = to_ctk(a_run())
    assert exported["run"][1]["activity"]["provider"]["func"] == "recovery_seconds"
    exported["run"][1]["output"] = "soon"
    with pytest.raises(ValueError, match=r"^run\.ctk\.json: field 'run\.1\.output'"):
        from_ctk(exported, Path("run.ctk.json"))


def test_a_lost_count_that_is_not_a_whole_number_is_refused_not_read_as_one() -> None:
    exported = to_ctk(a_run("failed"))
    lost = exported["steady_states"]["after"]["probes"][1]
    assert lost["activity"]["provider"]["func"] == "acknowledged_lost"
    lost["output"] = True  # pydantic would otherwise read it as 1 lost
    with pytest.raises(
        ValueError, match=r"^run\.ctk\.json: field 'steady_states\.after\.probes\.1\.output'"
    ):
        from_ctk(exported, Path("run.ctk.json"))


def test_another_extensions_probe_named_acknowledged_lost_is_not_read_as_our_lost_count() -> None:
    exported = to_ctk(a_run("failed"))
    del exported["ratequeue"]  # as chaoslib writes it: only the probes say what was lost
    lost = exported["steady_states"]["after"]["probes"][1]
    assert lost["activity"]["provider"]["func"] == "acknowledged_lost"
    assert from_ctk(exported, Path("run.ctk.json")).load["lost"] == 3
    lost["activity"]["provider"]["module"] = "someone_elses.probes"
    lost["output"] = {"lost": "whatever they count"}  # theirs: not a count of ours
    assert "lost" not in from_ctk(exported, Path("run.ctk.json")).load


def test_the_timeline_of_a_run_whose_times_lie_years_apart_has_a_bounded_axis() -> None:
    # A hand-edited or cut-short time once made the report write a label for every second in
    # between (and run out of time and memory).
    journal = a_run()
    journal.mark("first_acknowledged_write", 100.0 + 3e9, 100.0, "s1")  # ~95 years later
    svg = timeline_svg(journal)
    assert svg.count('text-anchor="middle"') <= MAX_TICKS + 1


def test_read_journals_skips_a_file_nested_past_the_parsers_depth(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    unreadable: list[str] = []
    assert read_journals(tmp_path, unreadable) == [] and unreadable == []


def test_a_chaostoolkit_run_interrupted_during_an_activity_reads_without_its_end_or_status(
    chaostoolkit_journal: dict[str, Any],
) -> None:
    # chaoslib (execute_activity) appends a run before it has a status or end, and writes the
    # journal's end only once the run ends.
    raw = json.loads(json.dumps(chaostoolkit_journal))
    raw["status"], raw["steady_states"]["after"], raw["rollbacks"] = "interrupted", None, []
    for key in ("status", "end", "duration"):
        del raw["run"][0][key]
    del raw["end"], raw["duration"]
    journal = from_ctk(raw, Path("journal.json"))
    assert (journal.status, journal.verdict, journal.ended_at) == ("interrupted", "aborted", None)
    assert journal.errors == ["look: None"]


def test_keys_chaoslib_or_an_extension_add_are_let_through(
    chaostoolkit_journal: dict[str, Any],
) -> None:
    raw = json.loads(json.dumps(chaostoolkit_journal))
    raw["extensions"] = [{"name": "someone-elses"}]
    raw["run"][0]["note"] = {"by": "a control"}
    raw["steady_states"]["before"]["probes"][0]["activity"]["provider"]["timeout"] = 3
    assert from_ctk(raw, Path("journal.json")) == from_ctk(
        chaostoolkit_journal, Path("journal.json")
    )


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("steady_states", "before"), "x", "steady_states.before"),
        (("run", 0), "look", "run.0"),
        (("start",), "yesterday", "start"),
    ],
)
def test_report_charts_the_good_chaostoolkit_journal_and_names_the_bad_one_without_a_traceback(
    chaostoolkit_journal: dict[str, Any],
    tmp_path: Path,
    path: tuple[str | int, ...],
    value: Any,
    field: str,
) -> None:
    (tmp_path / "good.json").write_text(json.dumps(chaostoolkit_journal))
    (tmp_path / "bad.json").write_text(json.dumps(edited(chaostoolkit_journal, path, value)))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert (result.exit_code, result.exception) == (0, None), result.output
    # The console wraps a long line anywhere, even before the colon after the path.
    assert f"bad.json:field'{field}'" in "".join(result.output.split())
    summary = (tmp_path / "report.md").read_text()
    assert f"bad.json: field '{field}'" in summary
    assert "1 runs, 1 passed." in summary  # the good one is charted, the bad one only named
    assert "the working directory exists" in summary


def test_compare_names_a_bad_chaostoolkit_journal_and_counts_the_good_one(
    chaostoolkit_journal: dict[str, Any], tmp_path: Path
) -> None:
    journals = tmp_path / "journals"
    journals.mkdir()
    (journals / "good.json").write_text(json.dumps(chaostoolkit_journal))
    bad = edited(chaostoolkit_journal, ("run", 0, "activity"), DROP)
    (journals / "bad.json").write_text(json.dumps(bad))
    table = tmp_path / "table.md"
    result = CliRunner().invoke(
        app, ["compare", str(journals), str(ROOT / "scenarios/primary_kill.yaml"),
              "--output", str(table)],
    )  # fmt: skip
    assert (result.exit_code, result.exception) == (0, None), result.output
    # The console wraps a long line anywhere, even before the colon after the path.
    said = "".join(result.output.split())
    assert "bad.json:field'run.0.activity':Fieldrequired" in said
    assert "(1 runs from " in table.read_text()
