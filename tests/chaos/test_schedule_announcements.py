"""`ratequeue-chaos run --every ... --notifications FILE` announces each run through the project's
notification channels: its start as a PagerDuty change event only, its verdict as the run's one
Slack message and a PagerDuty change event for a pass (a trigger for a failure, a resolve after a
pass), served here on loopback. The
runs themselves are stand-ins (an experiment against a testbed takes minutes); the schedule,
the CLI, the notifier and HTTP are real."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaos import schedule_settings, scheduler
from chaos.cli import app
from chaos.experiments import Experiment
from chaos.journal import Journal
from tests.lazarus.recorders import HttpRecorder, serving_http_recorder

SCENARIO = Path(__file__).parents[2] / "scenarios" / "replica_kill.yaml"


@pytest.fixture(autouse=True)
def quick_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortest --every lowered from a minute: these schedules' runs are stand-ins that
    leave nothing to settle, and come within a second."""
    monkeypatch.setattr(schedule_settings, "MIN_EVERY", 0.05)


VERDICTS = ["passed", "failed", "passed"]


@pytest.fixture
def http() -> Iterator[HttpRecorder]:
    with serving_http_recorder() as recorder:
        yield recorder


@pytest.fixture
def three_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-in runs ending with VERDICTS in turn; returns the run ids as they end."""
    ended: list[str] = []

    def run(path: Path, experiment: Experiment, *, journal_dir: Path, **_: object) -> Journal:
        journal = Journal(run_id=f"r{len(ended) + 1}", experiment=experiment.title,
                          deployment="staging", environment="dev", started_at=time.time(),
                          verdict=VERDICTS[len(ended)])  # fmt: skip
        journal.write(journal_dir)
        ended.append(journal.run_id)
        return journal

    monkeypatch.setattr(scheduler, "run_one", run)
    return ended


def channels_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "notifications.yaml"
    path.write_text(
        "teams:\n  sre:\n"
        f"    slack: {{webhook_url: '{url}/slack/T0/B0'}}\n"
        f"    pagerduty: {{routing_key: a-routing-key, url: '{url}/v2/enqueue'}}\n"
        "default_team: sre\n"
    )
    return path


def three_cycles(tmp_path: Path, http: HttpRecorder, *options: str) -> Path:
    """`ratequeue-chaos run --every 200ms --runs 3 OPTIONS` announcing to `http`; returns its
    journal directory."""
    journals = tmp_path / "journals"
    channels = channels_file(tmp_path, http.url)
    result = CliRunner().invoke(app, ["run", str(SCENARIO), "--every", "200ms", "--runs", "3",
                                      "--journal-dir", str(journals),
                                      "--notifications", str(channels), *options])  # fmt: skip
    assert result.exit_code == 0, result.output
    return journals


def test_each_scheduled_run_posts_one_slack_message_its_verdict_with_its_journal(
    tmp_path: Path, http: HttpRecorder, three_runs: list[str]
) -> None:
    journals = three_cycles(tmp_path, http)
    assert three_runs == ["r1", "r2", "r3"]
    messages = http.received("/slack/")
    assert len(messages) == 3, messages
    for run, verdict, message in zip(three_runs, VERDICTS, messages, strict=True):
        assert f"'Kill a replica': {verdict.upper()}" in message["text"]
        assert str(journals / f"{run}.json") in str(message["blocks"])


def test_pagerduty_is_told_a_failure_by_a_trigger_and_the_rest_by_change_events(
    tmp_path: Path, http: HttpRecorder, three_runs: list[str]
) -> None:
    three_cycles(tmp_path, http)
    changes = [body["payload"]["summary"] for body in http.received("/v2/change/enqueue")]
    assert len(changes) == 5 and sum("starting" in summary for summary in changes) == 3, changes
    alerts = [(body["event_action"], body["dedup_key"]) for body in http.pagerduty_events()]
    key = "chaos:staging:kill-a-replica"
    assert sorted(alerts) == [("resolve", key), ("resolve", key), ("trigger", key)], alerts
    (trigger,) = [b for b in http.pagerduty_events() if b["event_action"] == "trigger"]
    assert trigger["payload"]["custom_details"]["verdict"] == "failed"
    assert trigger["payload"]["custom_details"]["journal"].endswith("r2.json")


def test_with_a_journal_url_each_verdict_links_its_runs_journal(
    tmp_path: Path, http: HttpRecorder, three_runs: list[str]
) -> None:
    three_cycles(tmp_path, http, "--journal-url", "https://chaos.example/journals/")
    href = "https://chaos.example/journals/{}.json"
    verdicts = [b for b in http.received("/v2/change/enqueue") if "starting" not in str(b)]
    assert [b["links"] for b in verdicts] == [
        [{"href": href.format(run), "text": f"journal of run {run}"}] for run in ("r1", "r3")
    ]
    (trigger,) = [b for b in http.pagerduty_events() if b["event_action"] == "trigger"]
    assert trigger["links"] == [{"href": href.format("r2"), "text": "journal of run r2"}]
    ends = http.received("/slack/")
    assert [f"<{href.format(run)}|journal of run {run}>" in end["text"] for run, end in
            zip(three_runs, ends, strict=True)] == [True] * 3  # fmt: skip


def test_without_a_journal_url_no_announcement_carries_links(
    tmp_path: Path, http: HttpRecorder, three_runs: list[str]
) -> None:
    three_cycles(tmp_path, http)
    sent = [*http.received("/v2/change/enqueue"), *http.pagerduty_events()]
    assert sent and not any("links" in body for body in sent)
