"""`chaos run --json`: stdout carries one JSON document (the runs' journals), or on a schedule
one journal per line as each run ends, and nothing else; the progress and the verdict tables go
to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parents[2]
SCENARIOS = PROJECT / "scenarios"
# `python -m chaos` with the shortest --every lowered from a minute, so a schedule's runs come
# within a second (the interval is not what these tests are about).
QUICK_SCHEDULE = (
    "import chaos.schedule_settings as settings; settings.MIN_EVERY = 0.05; "
    "from chaos.cli import app; app()"
)


def test_run_json_prints_one_document_with_each_runs_journal(tmp_path: Path) -> None:
    experiments = [SCENARIOS / "replica_kill.yaml", SCENARIOS / "primary_kill.yaml"]
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "run", *map(str, experiments), "--dry-run", "--json",
         "--journal-dir", str(tmp_path / "journals")],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # raises if anything else shares stdout
    assert document["failed"] is False
    assert [run["experiment_file"] for run in document["runs"]] == [str(e) for e in experiments]
    assert {(run["dry_run"], run["verdict"]) for run in document["runs"]} == {(True, "not_run")}
    assert "hypothesis" in done.stderr  # the verdict tables are still shown, on stderr


def test_a_scheduled_run_json_prints_one_journal_per_line_as_each_run_ends(
    tmp_path: Path,
) -> None:
    # A dry run on a schedule plans each experiment once: two files, two lines.
    experiments = [SCENARIOS / "replica_kill.yaml", SCENARIOS / "primary_kill.yaml"]
    done = subprocess.run(
        [sys.executable, "-c", QUICK_SCHEDULE, "run", *map(str, experiments),
         "--dry-run", "--json", "--every", "100ms", "--journal-dir", str(tmp_path / "j")],
        capture_output=True, text=True, timeout=120, cwd=PROJECT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    journals = [json.loads(line) for line in lines]  # raises if anything else shares stdout
    assert [j["verdict"] for j in journals] == ["not_run", "not_run"]
    assert [j["experiment_file"] for j in journals] == [str(e) for e in experiments]
