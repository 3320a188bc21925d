"""The chaos runner and CLI around the experiments: validation before anything is touched, dry
runs, prod targets refused, the run lock, a schedule that survives a failed run, halting a run
(its faults rolled back), and the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from chaos import embedded_testbed, scheduler
from chaos.cli import app
from chaos.cron_schedule import CronSchedule
from chaos.errors import TargetError
from chaos.journal import HypothesisOutcome, Journal, read_journals
from chaos.processes import process_state, read_cmdline
from chaos.report import write_report
from chaos.schedule_store import schedule_name
from chaos.scheduler import run_lock, run_schedule
from chaos.targets import Deployment, from_testbed
from chaos.testbed import (
    TestbedNode,
    TestbedState,
    process_alive,
    processes_working_in,
    running_testbed,
)
from common.nodes import CLIENT_HOST
from common.redis_processes import RedisProcess, free_port, start_redis
from lazarus_lite.coordination.interface import RunLock
from lazarus_lite.coordination.opening import StoreAddress, opened_coordination_store
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import TOPOLOGY_KEY

PROJECT = Path(__file__).parents[2]
SCENARIOS = PROJECT / "scenarios"


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestbedState, Path]]:
    directory = tmp_path_factory.mktemp("runner") / "tb"
    with running_testbed(directory, shards=2, replicas=1, controllers=1) as state:
        yield state, directory


def test_an_invalid_experiment_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (SCENARIOS / "primary_kill.yaml").read_text()
    bad.write_text(text.replace("seconds: 10", "secs: 10"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    output = result.output.replace("\n", "")
    assert result.exit_code == 1
    assert (
        "bad.yaml" in output and "'hypotheses.0.recovered_within.seconds': Field required" in output
    )


def test_every_shipped_scenario_validates() -> None:
    result = CliRunner().invoke(app, ["validate", *map(str, sorted(SCENARIOS.glob("*.yaml")))])
    assert result.exit_code == 0, result.output


def test_a_prod_target_is_refused_without_allow_prod(tmp_path: Path) -> None:
    target = tmp_path / "prod.yaml"
    target.write_text("name: prod-east\nenvironment: prod\napi: http://127.0.0.1:1\n"
                      "control: redis://127.0.0.1:1/0\n")  # fmt: skip
    kill = str(SCENARIOS / "primary_kill.yaml")
    result = CliRunner().invoke(
        app, ["run", kill, "--target", str(target), "--journal-dir", str(tmp_path / "j")]
    )
    assert result.exit_code == 2
    assert "--allow-prod" in result.output
    assert not (tmp_path / "j").exists()


@pytest.mark.slow
def test_a_dry_run_plans_and_touches_nothing(
    testbed: tuple[TestbedState, Path], tmp_path: Path
) -> None:
    state, directory = testbed
    target = directory / "testbed.json"
    kill = str(SCENARIOS / "primary_kill.yaml")
    result = CliRunner().invoke(
        app, ["run", kill, "--target", str(target), "--dry-run", "--journal-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "kill primary" in result.output.replace("\n", " ")
    assert read_journals(tmp_path) == []  # a plan is not a run
    assert all(process_alive(node) for node in state.nodes)


def test_a_dry_run_without_a_target_starts_no_testbed(tmp_path: Path) -> None:
    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    result = CliRunner().invoke(app, ["run", str(SCENARIOS / "two_shards_down.yaml"), "--dry-run",
                                      "--journal-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kill primary" in result.output.replace("\n", " ")
    started = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()} - before
    # Only this process's descendants: other sessions on the machine start redis-servers too.
    ours = [pid for pid in started if _descends_from(pid, os.getpid())]
    assert not any(b"redis-server" in _cmdline(pid) for pid in ours)


def test_a_dry_run_writes_no_journal_directory_or_pid_file(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    result = CliRunner().invoke(app, ["run", str(SCENARIOS / "replica_kill.yaml"), "--dry-run",
                                      "--journal-dir", str(journals)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not journals.exists()


@pytest.mark.parametrize(
    ("schedule", "times"),
    [(["--every", "4h"], 3), (["--cron", "0 */25 * * *"], 3)],  # the latter: midnights only
)
def test_a_dry_run_on_a_schedule_prints_the_plan_once_with_its_next_run_times_and_exits(
    tmp_path: Path, schedule: list[str], times: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "run", str(SCENARIOS / "replica_kill.yaml"), *schedule,
         "--dry-run", "--journal-dir", str(tmp_path / "journals")],
        cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, output
    assert output.count("kill replica") == 1, output  # one plan, not one per period
    planned = output.split("a schedule would run at ")[1].split("; a dry run stops here")[0]
    assert len(planned.split(", ")) == times, planned
    assert not (tmp_path / "journals").exists()


def dry_run_in_a_process(tmp_path: Path, target_text: str) -> tuple[int, str]:
    """`ratequeue-chaos run --dry-run` against a target file of `target_text`, as its own process
    (what a person sees, traceback or not): its exit code and its output, whitespace collapsed."""
    target = tmp_path / "target.yaml"
    target.write_text(target_text)
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "run", str(SCENARIOS / "primary_kill.yaml"), "--target",
         str(target), "--dry-run", "--journal-dir", str(tmp_path / "journals")],
        cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not (tmp_path / "journals").exists()
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_a_dry_run_against_an_unreachable_control_store_names_it_without_a_traceback(
    tmp_path: Path,
) -> None:
    port = free_port((CLIENT_HOST,))  # nothing listens there
    control = f"redis://{CLIENT_HOST}:{port}/0"
    target = f"api: http://{CLIENT_HOST}:{port}\ncontrol: {control}\n"
    code, output = dry_run_in_a_process(tmp_path, target)
    assert code == 1 and "Traceback" not in output, output
    assert f"control store {control} is unreachable" in output


def test_a_dry_run_against_a_target_whose_port_is_not_a_number_is_refused_without_a_traceback(
    tmp_path: Path,
) -> None:
    target = f"api: http://{CLIENT_HOST}:1\ncontrol: redis://{CLIENT_HOST}:notaport\n"
    code, output = dry_run_in_a_process(tmp_path, target)
    assert code == 2 and "Traceback" not in output, output
    assert "refused:" in output and "field 'control'" in output


def test_the_run_lock_on_a_control_url_redis_py_refuses_is_a_target_error() -> None:
    # Built without validation: a deployment made in code, not loaded from a file.
    deployment = Deployment.model_construct(name="d", control=f"redis://{CLIENT_HOST}:99999")
    with (
        pytest.raises(TargetError, match=r"control store URL .* cannot be used"),
        run_lock(deployment, "me", ttl_seconds=30),
    ):
        pass


def test_the_topology_of_a_control_url_redis_py_refuses_is_a_target_error() -> None:
    deployment = Deployment.model_construct(name="d", control=f"redis://{CLIENT_HOST}:notaport")
    with pytest.raises(TargetError, match=r"control store URL .* cannot be used"):
        deployment.topology()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A control store holding a one-shard topology: what a dry run reads."""
    with LocalCluster.start(tmp_path_factory.mktemp("store"), shards=1, replicas=0) as cluster:
        yield cluster


def dry_run_against(store: LocalCluster, tmp_path: Path, experiment: Path) -> str:
    target = tmp_path / "target.yaml"
    target.write_text(f"api: http://{CLIENT_HOST}:1\ncontrol: {store.control.url}\n")
    journals = str(tmp_path / "j")
    result = CliRunner().invoke(app, ["run", str(experiment), "--target", str(target),
                                      "--dry-run", "--journal-dir", journals])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "j").exists()
    return " ".join(result.output.split())


def test_a_dry_run_takes_no_run_lock_and_leaves_another_runs_alone(
    store: LocalCluster, tmp_path: Path
) -> None:
    async def on_run_lock(use: Callable[[RunLock], Awaitable[str | None]]) -> str | None:
        async with opened_coordination_store(StoreAddress(control_url=store.control.url)) as s:
            return await use(s.run_lock)

    asyncio.run(on_run_lock(lambda lock: lock.take("another run", ttl=60)))
    try:
        output = dry_run_against(store, tmp_path, SCENARIOS / "primary_kill.yaml")
        assert "kill primary of s0" in output
        holder = asyncio.run(on_run_lock(lambda lock: lock.take("a probe", ttl=60)))
        assert holder == "another run"
    finally:
        asyncio.run(on_run_lock(lambda lock: lock.release("another run")))


def test_a_dry_run_runs_no_rollbacks(
    store: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chaos.faults.local.backend import LocalFaultBackend

    cleanups: list[object] = []
    monkeypatch.setattr(LocalFaultBackend, "cleanup_all", lambda self: cleanups.append(self))
    experiment = tmp_path / "with_rollbacks.yaml"
    experiment.write_text((SCENARIOS / "primary_kill.yaml").read_text()
                          + "rollbacks:\n  - {action: remove_network_faults}\n")  # fmt: skip
    dry_run_against(store, tmp_path, experiment)
    assert cleanups == []  # a real run's network faults are not a plan's to remove


def test_a_dry_run_against_a_topology_this_version_cannot_read_fails_without_a_traceback(
    store: LocalCluster, tmp_path: Path
) -> None:
    target = tmp_path / "target.yaml"
    target.write_text(f"api: http://{CLIENT_HOST}:1\ncontrol: {store.control.url}\n")
    with store.control.client() as conn:
        stored = conn.get(TOPOLOGY_KEY)
        conn.set(TOPOLOGY_KEY, b'{"epoch": "many", "shards": 5}')
        try:
            result = CliRunner().invoke(app, ["run", str(SCENARIOS / "primary_kill.yaml"),
                                              "--target", str(target), "--dry-run",
                                              "--journal-dir", str(tmp_path / "j")])  # fmt: skip
        finally:
            conn.set(TOPOLOGY_KEY, stored)
    output = " ".join(result.output.split())
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, output
    assert "dry run) failed:" in output and "topology in the control store" in output


def test_a_testbed_node_whose_pid_only_names_its_program_among_arguments_is_not_alive() -> None:
    # A shell that waits for its `sleep` (in a session of its own, so both go at the end).
    decoy = subprocess.Popen(["sh", "-c", "sleep 60; true", "python", "-m", "ratequeue"],
                             start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while read_cmdline(decoy.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # /proc shows no argv for a moment around the exec
        node = TestbedNode(name="api", role="api", host=CLIENT_HOST, port=1, pid=decoy.pid)
        assert read_cmdline(decoy.pid) is not None and not process_alive(node)
    finally:
        os.killpg(decoy.pid, signal.SIGKILL)
        decoy.wait(timeout=10)


def _descends_from(pid: str, ancestor: int) -> bool:
    """Is process `pid` (still alive) a descendant of `ancestor`?"""
    current = pid
    while current not in ("0", "1"):
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return False
        current = stat.rpartition(")")[2].split()[1]  # the field after the state: the ppid
        if current == str(ancestor):
            return True
    return False


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_a_second_run_against_the_same_deployment_is_refused_while_one_runs(
    testbed: tuple[TestbedState, Path],
) -> None:
    state, directory = testbed
    deployment = from_testbed(state, directory)
    with (
        run_lock(deployment, "first", ttl_seconds=30),
        pytest.raises(TargetError, match="another chaos run"),
        run_lock(deployment, "second", ttl_seconds=30),
    ):
        pass
    with run_lock(deployment, "third", ttl_seconds=30):
        pass  # released after the first


def test_a_failed_run_does_not_stop_the_schedule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outcomes: list[str] = []

    def flaky_run(path: Path, experiment: object, **_: object) -> Journal:
        outcomes.append("run")
        if len(outcomes) == 1:
            raise RuntimeError("the testbed would not start")
        return Journal(run_id=f"r{len(outcomes)}", experiment="x", deployment="d",
                       environment="dev", started_at=time.time(), verdict="passed")  # fmt: skip

    monkeypatch.setattr(scheduler, "run_one", flaky_run)
    journals = run_schedule([SCENARIOS / "replica_kill.yaml"], target=None, journal_dir=tmp_path,
                            every=0.01, jitter=0, dry_run=False, say=lambda _: None,
                            stop=threading.Event(), max_runs=2)  # fmt: skip
    assert len(outcomes) == 3 and [j.run_id for j in journals] == ["r2", "r3"]
    assert not (tmp_path / scheduler.PID_FILE).exists()


@pytest.mark.slow
def test_halt_stops_a_running_experiment_and_rolls_its_fault_back(
    testbed: tuple[TestbedState, Path], tmp_path: Path
) -> None:
    state, directory = testbed
    experiment = tmp_path / "long_pause.yaml"
    experiment.write_text(
        "title: A long pause\nload: {numbers: 10, enqueue_per_second: 10, duration: 60s}\n"
        "method:\n  - {action: pause, target: {role: primary, shard: random}, at: 1s}\n"
        "expect: nothing\nwatch_seconds: 60s\nhypotheses:\n  - {type: one_primary_per_shard}\n"
    )
    journals = tmp_path / "journals"
    run = subprocess.Popen(
        [sys.executable, "-m", "chaos", "run", str(experiment), "--target",
         str(directory / "testbed.json"), "--journal-dir", str(journals)],
        stdout=(tmp_path / "run.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        paused = _wait_for_paused_primary(state)
        halted = CliRunner().invoke(app, ["halt", "--journal-dir", str(journals)])
        assert halted.exit_code == 0, halted.output
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
    (journal,) = read_journals(journals)
    assert journal.status == "aborted" and journal.faults[0]["rolled_back_at"] is not None
    assert _process_state(state.node(paused).pid) != "T"


def _wait_for_paused_primary(state: TestbedState) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in state.nodes:
            if node.role == "primary" and _process_state(node.pid) == "T":
                return node.name
        time.sleep(0.1)
    raise AssertionError("no primary was paused")


def _process_state(pid: int) -> str:
    return process_state(pid) or ""


@pytest.mark.parametrize("given", [["--journal-dir", "typo"], []], ids=["typo", "default"])
def test_halt_refuses_a_journal_directory_that_does_not_exist_naming_it_and_creates_nothing(
    tmp_path: Path, given: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["halt", *given])
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    named = given[1] if given else "chaos-journals"
    assert f"no journal directory {named}" in output
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def a_run_on_its_embedded_testbed(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, dict]]:
    """`ratequeue-chaos run` of a long experiment on its embedded testbed (one shard, one
    replica), once that testbed is up: the runner and the mark naming its testbed. Whatever of
    it a test leaves running is stopped afterwards."""
    experiment = tmp_path / "long.yaml"
    text = (SCENARIOS / "replica_kill.yaml").read_text().replace("duration: 8s", "duration: 120s")
    experiment.write_text("testbed: {shards: 1, replicas: 1}\n" + text)
    journals = tmp_path / "journals"
    runner = subprocess.Popen([sys.executable, "-m", "chaos", "run", str(experiment),
                               "--journal-dir", str(journals)], cwd=PROJECT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    mark = embedded_testbed.mark_path(journals, runner.pid)
    record: dict = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and runner.poll() is None:
            if mark.exists():
                record = json.loads(mark.read_text())
                if (Path(record["directory"]) / "testbed.json").exists():
                    break
            time.sleep(0.05)
        assert runner.poll() is None and record, "the run ended before its testbed was up"
        record["journals"] = journals
        yield runner, record
    finally:
        runner.kill()
        runner.wait()
        if record:
            with contextlib.suppress(ProcessLookupError):
                if b"reap" in _cmdline(str(record["reaper_pid"])):
                    os.kill(record["reaper_pid"], signal.SIGKILL)
            embedded_testbed.stop_left_testbed(Path(record["directory"]))


@pytest.mark.slow  # the embedded testbed starts: 5-15 s
def test_an_embedded_testbed_does_not_outlive_its_run_killed_with_sigkill(tmp_path: Path) -> None:
    with a_run_on_its_embedded_testbed(tmp_path) as (runner, record):
        directory = Path(record["directory"])
        assert processes_working_in(directory)
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 30
        while directory.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_working_in(directory) == []
        assert not directory.exists()
        assert not embedded_testbed.mark_path(record["journals"], runner.pid).exists()


@pytest.mark.slow  # the embedded testbed starts: 5-15 s
def test_halt_stops_and_names_the_embedded_testbed_of_a_run_killed_with_its_reaper(
    tmp_path: Path,
) -> None:
    with a_run_on_its_embedded_testbed(tmp_path) as (runner, record):
        directory = Path(record["directory"])
        os.kill(record["reaper_pid"], signal.SIGKILL)
        runner.kill()
        runner.wait()
        halted = CliRunner().invoke(app, ["halt", "--journal-dir", str(record["journals"])])
        said = " ".join(halted.output.split())
        assert halted.exit_code == 0, said
        assert f"embedded testbed of killed run {runner.pid} in {directory}: stopped" in said
        assert processes_working_in(directory) == []
        assert not directory.exists()


def test_the_report_has_a_timeline_per_run_and_the_recovery_trend(tmp_path: Path) -> None:
    for index, recovery in enumerate((0.7, 0.9)):
        journal = Journal(run_id=f"run-{index}", experiment="Kill a shard primary",
                          deployment="local", environment="dev", started_at=1000.0 + index,
                          shard="s1", verdict="passed" if index else "failed")  # fmt: skip
        journal.mark("fault_injected", 1000.0 + index, 1000.0 + index)
        journal.mark("first_acknowledged_write", 1000.0 + index + recovery, 1000.0 + index)
        journal.hypotheses = [HypothesisOutcome(hypothesis="acknowledged_lost", ok=bool(index),
                                                expected="<= 0", measured=1 - index)]  # fmt: skip
        journal.write(tmp_path)
    html, markdown = write_report(tmp_path)
    page = html.read_text()
    assert page.count("<svg") == 3  # the trend and one timeline per run
    assert "run-0" in page and "run-1" in page and "first_acknowledged_write" in page
    summary = markdown.read_text()
    assert "| 0.70 |" in summary and "run-0: acknowledged_lost measured 1" in summary


def test_a_journal_round_trips_as_json(tmp_path: Path) -> None:
    journal = Journal(run_id="r", experiment="x", deployment="d", environment="dev",
                      started_at=1.0)  # fmt: skip
    path = journal.write(tmp_path)
    assert json.loads(path.read_text())["run_id"] == "r"
    assert redis  # imported for the lock test's deployment


def passing_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-in runs that pass at once; returns the list they append "run" to."""
    runs: list[str] = []

    def run(path: Path, experiment: object, **_: object) -> Journal:
        runs.append("run")
        return Journal(run_id=f"r{len(runs)}", experiment="x", deployment="d",
                       environment="dev", started_at=time.time(), verdict="passed")  # fmt: skip

    monkeypatch.setattr(scheduler, "run_one", run)
    return runs


def test_a_schedule_hands_each_verdict_on_as_its_run_ends_and_keeps_its_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = passing_runs(monkeypatch)  # the verdicts go into the same list
    run_schedule([SCENARIOS / "replica_kill.yaml"], target=None, journal_dir=tmp_path,
                 every=0.01, jitter=0, dry_run=False, say=lambda _: None,
                 stop=threading.Event(), max_runs=3,
                 on_journal=lambda j: events.append(f"verdict {j.verdict}"))  # fmt: skip
    assert events == ["run", "verdict passed"] * 3
    kept = json.loads((tmp_path / "chaos-schedule.json").read_text())
    assert kept["every"] == 0.01 and kept["next_run"] >= kept["origin"]


def test_a_schedule_against_a_deployment_keeps_its_next_run_in_the_control_store(
    store: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = passing_runs(monkeypatch)
    deployment = Deployment.model_construct(name="d", control=store.control.url)
    stop = threading.Event()
    run_schedule([SCENARIOS / "replica_kill.yaml"], target=deployment,
                 journal_dir=tmp_path / "first-host", every=3600, jitter=0, dry_run=False,
                 say=lambda _: None, stop=stop, on_journal=lambda _: stop.set())  # fmt: skip
    name = schedule_name([SCENARIOS / "replica_kill.yaml"], 3600)
    kept = json.loads(redis.Redis.from_url(store.control.url).get(f"chaos:schedule:{name}"))
    assert runs == ["run"] and kept["every"] == 3600
    assert kept["next_run"] == pytest.approx(kept["origin"] + 3600)
    assert not (tmp_path / "first-host" / "chaos-schedule.json").exists()

    # Restarted elsewhere, without the first host's disk: it waits for the kept time.
    said: list[str] = []
    again = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("resuming"):
            again.set()  # stop instead of waiting an hour for the kept run

    run_schedule([SCENARIOS / "replica_kill.yaml"], target=deployment,
                 journal_dir=tmp_path / "second-host", every=3600, jitter=0, dry_run=False,
                 say=say, stop=again)  # fmt: skip
    assert runs == ["run"], said
    assert any("kept in the control store" in line for line in said), said


def test_a_schedule_waits_for_a_store_that_cannot_be_read_instead_of_replacing_its_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = passing_runs(monkeypatch)
    experiment = SCENARIOS / "replica_kill.yaml"
    port = free_port()
    key = f"chaos:schedule:{schedule_name([experiment], 3600)}"
    origin = time.time() - 1800  # kept half an hour ago: the next run is half an hour ahead
    seeded = json.dumps({"origin": origin, "every": 3600, "next_run": origin + 3600})
    started: list[RedisProcess] = []
    said: list[str] = []
    stop = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("the kept schedule cannot be read") and not started:
            # The store comes up, holding the schedule, while the scheduler asks again.
            started.append(start_redis("control", "control", None, tmp_path, port=port))
            started[0].client().set(key, seeded)
        if line.startswith("resuming"):
            stop.set()  # instead of waiting half an hour for the kept run

    deployment = Deployment.model_construct(name="d", control=f"redis://{CLIENT_HOST}:{port}")
    try:
        run_schedule([experiment], target=deployment, journal_dir=tmp_path / "j", every=3600,
                     jitter=0, dry_run=False, say=say, stop=stop, max_runs=1)  # fmt: skip
        kept = json.loads(started[0].client().get(key))
    finally:
        for node in started:
            node.stop()
    assert runs == [], said
    assert (kept["origin"], kept["next_run"]) == pytest.approx((origin, origin + 3600))


def test_a_schedule_whose_store_never_answers_runs_nothing_and_asks_again_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = passing_runs(monkeypatch)
    gone = Deployment.model_construct(name="d", control=f"redis://{CLIENT_HOST}:{free_port()}")
    said: list[str] = []
    stop = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        if len(said) == 2:
            stop.set()

    run_schedule([SCENARIOS / "replica_kill.yaml"], target=gone, journal_dir=tmp_path,
                 every=0.01, jitter=0, dry_run=False, say=say, stop=stop,
                 max_runs=1)  # fmt: skip
    assert runs == []
    assert ["asked again in 1 s" in said[0], "asked again in 2 s" in said[1]] == [True, True], said


def test_a_control_store_that_stops_answering_does_not_stop_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = start_redis("control", "control", None, tmp_path)
    runs: list[str] = []

    def run(path: Path, experiment: object, **_: object) -> Journal:
        runs.append("run")
        control.stop()  # gone once the schedule was read: its next run cannot be kept
        return Journal(run_id=f"r{len(runs)}", experiment="x", deployment="d",
                       environment="dev", started_at=time.time(), verdict="passed")  # fmt: skip

    monkeypatch.setattr(scheduler, "run_one", run)
    deployment = Deployment.model_construct(name="d", control=control.url)
    said: list[str] = []
    try:
        run_schedule([SCENARIOS / "replica_kill.yaml"], target=deployment,
                     journal_dir=tmp_path / "j", every=0.01, jitter=0, dry_run=False,
                     say=said.append, stop=threading.Event(), max_runs=2)  # fmt: skip
    finally:
        control.stop()
    assert runs == ["run", "run"]
    assert any(line.startswith("the schedule could not be kept") for line in said), said


def test_a_schedule_kept_by_an_earlier_version_in_the_journal_directory_is_adopted(
    store: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = passing_runs(monkeypatch)
    origin = time.time() - 600
    earlier = {"origin": origin, "every": 5400.0, "next_run": origin + 5400}
    (tmp_path / "chaos-schedule.json").write_text(json.dumps(earlier))
    stop = threading.Event()
    said: list[str] = []

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("resuming"):
            stop.set()  # instead of waiting for the adopted next run

    deployment = Deployment.model_construct(name="d", control=store.control.url)
    run_schedule([SCENARIOS / "replica_kill.yaml"], target=deployment, journal_dir=tmp_path,
                 every=5400, jitter=0, dry_run=False, say=say, stop=stop,
                 max_runs=1)  # fmt: skip
    name = schedule_name([SCENARIOS / "replica_kill.yaml"], 5400)
    kept = json.loads(redis.Redis.from_url(store.control.url).get(f"chaos:schedule:{name}"))
    assert runs == [], said
    assert kept == pytest.approx(earlier)  # now kept in the control store
    # ... and retired, so no other schedule adopts it again
    assert not (tmp_path / "chaos-schedule.json").exists()
    assert (tmp_path / "chaos-schedule.json.adopted").exists()


def test_a_schedule_is_named_for_its_files_paths_and_cadence() -> None:
    kill = [Path("a/kill.yaml")]
    assert schedule_name(kill, 3600) == schedule_name([Path("a/../a/kill.yaml")], 3600)
    assert schedule_name(kill, 3600).startswith("kill-")
    assert schedule_name(kill, 3600) != schedule_name([Path("b/kill.yaml")], 3600)
    assert schedule_name(kill, 3600) != schedule_name(kill, 7200)
    assert schedule_name(kill, None, CronSchedule("0 * * * *")) != schedule_name(kill, 3600)


def test_an_earlier_schedule_file_of_another_cadence_is_left_to_its_own_schedule(
    store: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = passing_runs(monkeypatch)
    origin = time.time() - 600
    earlier = json.dumps({"origin": origin, "every": 5400.0, "next_run": origin + 5400})
    (tmp_path / "chaos-schedule.json").write_text(earlier)
    deployment = Deployment.model_construct(name="d", control=store.control.url)
    stop = threading.Event()
    guard = threading.Timer(20, stop.set)  # never hangs the suite, whatever the store keeps
    guard.start()
    # A period no other test keeps in the module's store: nothing kept, so a grid of its own.
    run_schedule([SCENARIOS / "replica_kill.yaml"], target=deployment, journal_dir=tmp_path,
                 every=4321, jitter=0, dry_run=False, say=lambda _: None, stop=stop,
                 max_runs=1)  # fmt: skip
    guard.cancel()
    assert runs == ["run"]  # a grid of its own, starting now
    assert (tmp_path / "chaos-schedule.json").read_text() == earlier
    assert not (tmp_path / "chaos-schedule.json.adopted").exists()


def test_a_schedule_keeps_its_name_when_a_symlinked_release_directory_moves(
    tmp_path: Path,
) -> None:
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "kill.yaml").write_text("")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "r1")
    before = schedule_name([current / "kill.yaml"], 3600.0)
    current.unlink()
    current.symlink_to(tmp_path / "r2")
    assert schedule_name([current / "kill.yaml"], 3600.0) == before


def test_a_period_in_whole_seconds_and_as_a_decimal_is_one_schedule() -> None:
    assert schedule_name([Path("kill.yaml")], 3600) == schedule_name([Path("kill.yaml")], 3600.0)


def test_the_run_lock_is_kept_past_its_ttl_while_the_run_lasts(store: LocalCluster) -> None:
    deployment = Deployment.model_construct(name="d", control=store.control.url)
    with run_lock(deployment, "long run", ttl_seconds=0.6):
        time.sleep(1.5)  # more than twice the TTL: only the renewals keep it
        with (
            pytest.raises(TargetError, match="another chaos run"),
            run_lock(deployment, "second", ttl_seconds=30),
        ):
            pass
    with run_lock(deployment, "after", ttl_seconds=30):
        pass  # given back when the run ended


def naming_shard(tmp_path: Path, shard: str, role: str = "primary") -> Path:
    """An experiment whose one step kills the `role` node of `shard`, named outright."""
    experiment = tmp_path / "named_shard.yaml"
    experiment.write_text(
        "title: A named shard\nload: {numbers: 10, enqueue_per_second: 10, duration: 5s}\n"
        f"method:\n  - {{action: kill, target: {{role: {role}, shard: {shard}}}, at: 1s}}\n"
        "hypotheses:\n  - {type: one_primary_per_shard}\n"
    )
    return experiment


def docker_step(tmp_path: Path) -> Path:
    """An experiment whose one step kills a primary with the docker backend."""
    experiment = tmp_path / "docker_step.yaml"
    experiment.write_text(
        "title: A docker step\nload: {numbers: 10, enqueue_per_second: 10, duration: 5s}\n"
        "method:\n  - {action: kill, backend: docker, target: {role: primary}, at: 1s}\n"
        "hypotheses:\n  - {type: one_primary_per_shard}\n"
    )
    return experiment


DOCKER_ON_NO_CONTAINERS = (
    "field 'method.0.backend': docker acts on containers, and {where} has none (no node names a "
    "container, no docker_deployment); use backend local or gremlin, or a target of a Docker "
    "deployment"
)


def test_a_docker_step_on_the_embedded_testbed_is_refused_naming_the_field_before_it_starts(
    tmp_path: Path,
) -> None:
    journals = tmp_path / "j"
    result = CliRunner().invoke(app, ["run", str(docker_step(tmp_path)), "--journal-dir",
                                      str(journals)])  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert DOCKER_ON_NO_CONTAINERS.format(where="the embedded testbed") in output
    assert "starting the embedded testbed" not in output and not journals.exists()


def test_a_run_with_a_docker_step_on_a_deployment_without_containers_aborts_before_the_load(
    store: LocalCluster, tmp_path: Path
) -> None:
    from chaos.experiments import load_experiment
    from chaos.runner import ExperimentRunner

    deployment = Deployment(api=f"http://{CLIENT_HOST}:1", control=store.control.url)
    runner = ExperimentRunner(deployment, journal_dir=tmp_path / "j")
    journal = runner.run(load_experiment(docker_step(tmp_path)))
    assert journal.status == "aborted", journal.errors
    where = "deployment 'local-testbed'"
    assert journal.errors == [DOCKER_ON_NO_CONTAINERS.format(where=where) + "; nothing was touched"]
    assert journal.moment("load_started") is None and journal.faults == []


def test_a_run_naming_a_shard_the_deployment_lacks_aborts_before_the_load_naming_the_field(
    store: LocalCluster, tmp_path: Path
) -> None:
    from chaos.experiments import load_experiment
    from chaos.runner import ExperimentRunner

    deployment = Deployment(api=f"http://{CLIENT_HOST}:1", control=store.control.url)
    runner = ExperimentRunner(deployment, journal_dir=tmp_path / "j")
    journal = runner.run(load_experiment(naming_shard(tmp_path, "s99")))
    assert journal.status == "aborted", journal.errors
    assert journal.errors == [
        "field 'method.0.target.shard': no shard 's99' in this deployment (its shards: s0); "
        "nothing was touched"
    ]
    assert journal.moment("load_started") is None and journal.faults == []


def test_a_dry_run_naming_a_shard_the_target_lacks_is_refused_naming_the_field_and_shards(
    store: LocalCluster, tmp_path: Path
) -> None:
    target = tmp_path / "target.yaml"
    target.write_text(f"api: http://{CLIENT_HOST}:1\ncontrol: {store.control.url}\n")
    result = CliRunner().invoke(app, ["run", str(naming_shard(tmp_path, "s99")), "--target",
                                      str(target), "--dry-run", "--journal-dir",
                                      str(tmp_path / "j")])  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "dry run) failed:" in output and "kill primary of s99" not in output
    assert "field 'method.0.target.shard': no shard 's99' in this deployment (its shards: s0)" in (
        output
    )


def test_a_dry_run_naming_a_shard_the_embedded_testbed_lacks_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(naming_shard(tmp_path, "s99")), "--dry-run",
                                      "--journal-dir", str(tmp_path / "j")])  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "no shard 's99' in this deployment (its shards: s0, s1, s2)" in output


def test_a_dry_run_of_a_store_node_step_naming_any_shard_plans_it(
    store: LocalCluster, tmp_path: Path
) -> None:
    # A store node is no shard's own: the shard a step names for it is not used, nor checked.
    target = tmp_path / "target.yaml"
    target.write_text(f"api: http://{CLIENT_HOST}:1\ncontrol: {store.control.url}\n")
    experiment = naming_shard(tmp_path, "s99", role="control_store")
    journals = str(tmp_path / "j")
    result = CliRunner().invoke(app, ["run", str(experiment), "--target", str(target),
                                      "--dry-run", "--journal-dir", journals])  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "kill control_store of s0" in output


def test_validate_says_a_named_shard_is_checked_when_the_experiment_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(naming_shard(tmp_path, "s99"))])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, output
    assert "field 'method.0.target.shard' names shard 's99': not checked here" in output
