"""`ratequeue-chaos run --every ... --metrics-port N` serves Prometheus metrics while the schedule
runs: runs by verdict, the last run's recovery seconds and acknowledged lost, the last and next run
times, and whether a fault is active. The runs are stand-ins that report a fault as the runner
does (an experiment against a testbed takes minutes); the schedule, the CLI and the HTTP
endpoint are real, and the metrics are scraped over HTTP while the third run's fault is on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from chaos import schedule_settings, scheduler
from chaos.cli import app
from chaos.experiments import Experiment
from chaos.journal import Journal, TimelineEntry
from common.redis_processes import free_port

SCENARIO = Path(__file__).parents[2] / "scenarios" / "replica_kill.yaml"


@pytest.fixture(autouse=True)
def quick_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortest --every lowered from a minute: these schedules' runs are stand-ins that
    leave nothing to settle, and come within a second."""
    monkeypatch.setattr(schedule_settings, "MIN_EVERY", 0.05)


VERDICTS = ["passed", "failed", "passed"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_the_schedule_serves_its_runs_and_the_active_fault_as_prometheus_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    scrapes: list[str] = []
    ended: list[str] = []

    def run(path: Path, experiment: Experiment, *, journal_dir: Path,
            on_fault: Callable[[bool], None], **_: object) -> Journal:  # fmt: skip
        on_fault(True)
        if len(ended) == 2:  # the third run, its fault on: what a scraper sees now
            scrapes.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        on_fault(False)
        fault = time.time()
        journal = Journal(run_id=f"r{len(ended) + 1}", experiment=experiment.title,
                          deployment="staging", environment="dev", started_at=fault,
                          ended_at=fault, verdict=VERDICTS[len(ended)],
                          load={"lost": len(ended)},
                          timeline=[TimelineEntry(name="first_acknowledged_write", at=fault + 4,
                                                  offset=4.0 + len(ended))])  # fmt: skip
        ended.append(journal.run_id)
        return journal

    monkeypatch.setattr(scheduler, "run_one", run)
    result = CliRunner().invoke(app, ["run", str(SCENARIO), "--every", "200ms", "--runs", "3",
                                      "--journal-dir", str(tmp_path),
                                      "--metrics-port", str(port)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (scrape,) = scrapes
    seen = samples(scrape)
    assert seen[("chaos_runs_total", (("verdict", "passed"),))] == 1
    assert seen[("chaos_runs_total", (("verdict", "failed"),))] == 1
    assert seen[("chaos_runs_total", (("verdict", "aborted"),))] == 0
    assert seen[("chaos_last_run_recovery_seconds", ())] == 5.0  # the second run's
    assert seen[("chaos_last_run_acknowledged_lost", ())] == 1
    assert seen[("chaos_fault_active", ())] == 1
    last, next_run = seen[("chaos_last_run_timestamp_seconds", ())], seen[
        ("chaos_next_run_timestamp_seconds", ())]  # fmt: skip
    assert 0 < last <= next_run <= time.time() + 1


def test_the_metrics_endpoint_is_closed_when_the_schedule_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()

    def run(path: Path, experiment: Experiment, **_: object) -> Journal:
        return Journal(run_id="r", experiment=experiment.title, deployment="d",
                       environment="dev", started_at=time.time(), verdict="passed")  # fmt: skip

    monkeypatch.setattr(scheduler, "run_one", run)
    result = CliRunner().invoke(app, ["run", str(SCENARIO), "--every", "100ms", "--runs", "1",
                                      "--journal-dir", str(tmp_path),
                                      "--metrics-port", str(port)])  # fmt: skip
    assert result.exit_code == 0, result.output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
