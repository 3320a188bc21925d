"""The real Chaos Toolkit (`chaostoolkit run`, the venv's `chaos`) runs
scenarios/ctk/primary_kill.json against an embedded testbed through the extension `chaos.ctk`:
the steady state holds before and after a primary kill under load; a tolerance that the kill
breaks makes CTK report the run deviated; `ratequeue-chaos report` reads CTK's journal; and a
fault outlives no run, also one whose rollbacks CTK skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chaos.journal import read_journals
from chaos.targets import load_deployment
from chaos.testbed import STATE_FILE, running_testbed

ROOT = Path(__file__).parents[1]
EXPERIMENT = ROOT / "scenarios" / "ctk" / "primary_kill.json"
CHAOSTOOLKIT = Path(sysconfig.get_path("scripts")) / "chaos"

pytestmark = pytest.mark.slow


def chaostoolkit_run(experiment: Path, testbed: Path, workdir: Path) -> dict[str, Any]:
    """`chaos run` (Chaos Toolkit's CLI) in a subprocess; its journal.json."""
    journal = workdir / "journal.json"
    # The extension is imported from this checkout, whatever the venv's install points at.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RATEQUEUE_DEPLOYMENT": str(testbed), "PYTHONPATH": path}
    done = subprocess.run(
        [str(CHAOSTOOLKIT), "--no-version-check", "run", "--journal-path", str(journal),
         str(experiment)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert journal.exists(), done.stdout + done.stderr
    return json.loads(journal.read_text())


def probes_after(journal: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["activity"]["name"]: p for p in journal["steady_states"]["after"]["probes"]}


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, Path]]:
    directory = tmp_path_factory.mktemp("ctk-pass")
    with running_testbed(directory / "testbed", shards=2, replicas=2):
        yield chaostoolkit_run(EXPERIMENT, directory / "testbed", directory), directory


def test_chaostoolkit_runs_the_primary_kill_experiment_to_completed_not_deviated(
    passing_run: tuple[dict, Path],
) -> None:
    journal, _ = passing_run
    failed = [r["activity"]["name"] for r in journal["run"] if r["status"] != "succeeded"]
    assert journal["status"] == "completed", (failed, journal["steady_states"])
    assert journal["deviated"] is False, journal["steady_states"]["after"]
    after = probes_after(journal)
    assert after["acknowledged-lost"]["output"] == 0
    assert after["one-primary-per-shard"]["output"] is True
    kill = next(r for r in journal["run"] if r["activity"]["name"] == "kill-primary")
    [fault] = kill["output"]
    assert (fault["action"], fault["role"], fault["backend"]) == ("kill", "primary", "local")
    recovery = next(r for r in journal["run"] if r["activity"]["name"] == "recovery-seconds")
    assert recovery["status"] == "succeeded" and recovery["output"] > 0


def test_the_report_reads_the_chaostoolkit_journal_as_a_passed_run(
    passing_run: tuple[dict, Path],
) -> None:
    _, directory = passing_run
    [journal] = read_journals(directory)
    assert (journal.experiment, journal.verdict) == ("Kill a shard primary under load", "passed")
    assert journal.faults and journal.faults[0]["action"] == "kill"
    recovery = journal.recovery_seconds()
    assert recovery is not None and recovery > 0
    assert journal.load["lost"] == 0


def test_a_tolerance_the_kill_breaks_makes_chaostoolkit_report_deviated(tmp_path: Path) -> None:
    experiment = json.loads(EXPERIMENT.read_text())
    # "No primary ever changes": holds before the method, not after a failover.
    experiment["steady-state-hypothesis"]["probes"].append(
        {"type": "probe", "name": "promoted-shards", "tolerance": 0,
         "provider": {"type": "python", "module": "chaos.ctk.probes", "func": "promoted_shards"}}
    )  # fmt: skip
    path = tmp_path / "no_primary_changes.json"
    path.write_text(json.dumps(experiment))
    with running_testbed(tmp_path / "testbed", shards=2, replicas=2):
        journal = chaostoolkit_run(path, tmp_path / "testbed", tmp_path)
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert (journal["status"], journal["deviated"]) == ("completed", True)
    after = probes_after(journal)
    assert after["promoted-shards"]["output"] == 1
    assert after["promoted-shards"]["tolerance_met"] is False
    # The deviation is the promotion's alone: the kill lost nothing and left one primary.
    assert after["acknowledged-lost"]["tolerance_met"] is True
    assert after["one-primary-per-shard"]["tolerance_met"] is True
    [ours] = read_journals(tmp_path)
    assert ours.verdict == "failed"


def test_a_paused_primary_runs_again_after_a_failed_run_whose_rollbacks_chaostoolkit_skipped(
    tmp_path: Path,
) -> None:
    experiment = {
        "title": "pause a primary, then a probe that cannot measure",
        "description": "CTK's default rollback strategy skips rollbacks of a failed run.",
        "configuration": json.loads(EXPERIMENT.read_text())["configuration"],
        # The hypothesis only after the method, so the pause happens and the run then fails.
        "runtime": {"hypothesis": {"strategy": "after-method-only"},
                    "rollbacks": {"strategy": "default"}},
        "steady-state-hypothesis": {"title": "recovered", "probes": [
            {"type": "probe", "name": "recovery-seconds", "tolerance": {"type": "range",
             "range": [0, 60]}, "provider": {"type": "python", "module": "chaos.ctk.probes",
             "func": "recovery_seconds", "arguments": {"timeout": 1}}}]},
        "method": [{"type": "action", "name": "pause-primary", "provider": {"type": "python",
                    "module": "chaos.ctk.actions", "func": "pause"}}],
        "rollbacks": [{"type": "action", "name": "resume", "provider": {"type": "python",
                       "module": "chaos.ctk.actions", "func": "resume"}}],
    }  # fmt: skip
    path = tmp_path / "pause_then_fail.json"
    path.write_text(json.dumps(experiment))
    with running_testbed(tmp_path / "testbed", shards=1, replicas=1):
        journal = chaostoolkit_run(path, tmp_path / "testbed", tmp_path)
        [pause] = journal["run"]
        assert pause["status"] == "succeeded", pause
        assert (journal["status"], journal["rollbacks"]) == ("failed", [])
        [fault] = pause["output"]
        node = load_deployment(tmp_path / "testbed" / STATE_FILE).node(fault["target"])
        with redis.Redis(host=node.host, port=node.port, socket_timeout=5) as conn:
            assert conn.ping()
