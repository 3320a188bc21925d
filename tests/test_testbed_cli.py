"""The `ratequeue-chaos testbed` command line, end to end: `up` starts a whole deployment on
loopback and describes it in DIR/testbed.json, `status` reports it healthy, its API takes messages,
and `down` stops every process `up` started, its supervisor first; an `up` interrupted part-way
stops what it had started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from chaos import testbed
from chaos.processes import running
from tests.suite_control import up_args_on_suite_control

REPO = Path(__file__).resolve().parents[1]
NODE_FIELDS = {"name", "role", "shard", "host", "port", "pid"}


def chaos(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run the `ratequeue-chaos` console script's app (`chaos.cli:app`) in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", "from chaos.cli import app; app()", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)  # fmt: skip


@pytest.mark.slow  # 7-20 s here: `up` starts redis nodes, the API, controllers and sensors
def test_a_testbed_goes_up_reports_healthy_takes_messages_and_down_stops_every_process(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "bed"
    state_file = directory / "testbed.json"
    nodes: list[dict] = []
    supervisor_pid = None
    down = None
    left: list[dict] = []
    try:
        up_args = up_args_on_suite_control(("--shards", "2", "--replicas", "1"))
        up = chaos("testbed", "up", "--dir", str(directory), *up_args)
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads(state_file.read_text())
        nodes = state["nodes"]
        supervisor_pid = state["supervisor"]["pid"]
        assert running(supervisor_pid)

        assert state["api"].startswith("http://127.0.0.1:")
        assert state["control"].startswith("redis://127.0.0.1:")
        assert all(set(node) >= NODE_FIELDS for node in nodes)
        roles = [(node["role"], node["shard"]) for node in nodes]
        for expected in [("control", None), ("primary", "s0"), ("replica", "s0"),
                         ("primary", "s1"), ("replica", "s1"), ("api", None)]:  # fmt: skip
            assert roles.count(expected) == 1, roles
        assert len({node["name"] for node in nodes}) == len(nodes)
        assert all(running(node["pid"]) for node in nodes), nodes
        control = next(node for node in nodes if node["role"] == "control")
        assert state["control"].startswith(f"redis://{control['host']}:{control['port']}")

        status = chaos("testbed", "status", "--dir", str(directory))
        assert status.returncode == 0, status.stdout + status.stderr
        assert "healthy" in status.stdout
        assert f"supervisor pid {supervisor_pid}: running" in status.stdout

        response = httpx.post(f"{state['api']}/v1/numbers/+14155550100/messages",
                              json={"id": "m-1", "body": "hello"}, timeout=10)  # fmt: skip
        assert response.status_code == 201, response.text
        assert response.json()["shard"] == "s0"
    finally:
        if state_file.exists():
            down = chaos("testbed", "down", "--dir", str(directory))
        left = [node for node in nodes if running(node["pid"])]
        # Should `down` fail, still stop what `up` started (checked by command line, so no
        # recycled pid is signalled), lest a failed run leave processes behind.
        for node in left:
            with contextlib.suppress(ValueError, ProcessLookupError):
                if testbed.process_alive(testbed.TestbedNode.model_validate(node)):
                    os.kill(node["pid"], signal.SIGKILL)

    assert down is not None and down.returncode == 0, down and down.stdout + down.stderr
    assert f"stopped {len(nodes) + 1} processes" in down.stdout  # the nodes and the supervisor
    assert [node["name"] for node in left] == []
    assert supervisor_pid is not None and not running(supervisor_pid)
    assert not state_file.exists()
    after = chaos("testbed", "status", "--dir", str(directory))
    assert after.returncode == 1


def _first_redis_node_started(directory: Path) -> bool:
    return any((directory / "redis").glob("*/redis.log"))


def _api_starting(directory: Path) -> bool:
    return (directory / "logs" / "api.log").exists()


@pytest.mark.slow  # 2-6 s each: `up` is stopped part-way
@pytest.mark.parametrize("moment", [_first_redis_node_started, _api_starting],
                         ids=["while-redis-starts", "while-the-api-starts"])  # fmt: skip
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_up_stops_every_process_it_started_and_says_so_in_one_line(
    tmp_path: Path, moment: Callable[[Path], bool], signum: int
) -> None:
    directory = tmp_path / "bed"
    up = subprocess.Popen(
        [sys.executable, "-c", "from chaos.cli import app; app()", "testbed", "up",
         "--dir", str(directory), "--shards", "3", "--replicas", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not moment(directory) and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert up.poll() is None, "up ended before it could be interrupted"
        up.send_signal(signum)
        stdout, stderr = up.communicate(timeout=60)

        assert up.returncode == 128 + signum, stdout + stderr
        assert "Traceback" not in stdout + stderr
        assert stdout.strip().splitlines() == [
            f"testbed up interrupted ({signal.Signals(signum).name}): stopped every process it "
            "had started"
        ], stdout + stderr
        assert testbed.processes_working_in(directory) == []
    finally:
        up.kill()
        up.wait()
        testbed.sweep(directory)


class SignalsItselfWhenCollected:
    """An object whose finalizer sends this process `signum`: what a redis ConnectionPool's
    `__del__` looked like when a Ctrl-C reached `testbed up` in the middle of it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        time.sleep(0.05)  # the handler runs here, inside the finalizer


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_that_lands_in_a_finalizer_still_interrupts_the_work_and_prints_nothing(
    signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from chaos.cli import interruptible

    went_on_after_it = False
    with pytest.raises(KeyboardInterrupt), interruptible() as caught:
        SignalsItselfWhenCollected(signum)  # collected at once: the finalizer swallows the raise
        went_on_after_it = True
    assert went_on_after_it  # Python dropped the exception; the block's end raises it again
    assert caught == [signum]
    assert capsys.readouterr().err == ""  # no "Exception ignored in ... Traceback"


def up_with_the_interrupt_dropped(
    monkeypatch: pytest.MonkeyPatch, directory: Path, *, writes_state: bool, then: int | None = None
) -> tuple[list[str], object]:
    """`testbed up` in this process, its start replaced by one that is signalled inside a
    finalizer (the signal dropped, the start going on) and writes its state or not; its `down`
    by one that records it ran, signalled `then` halfway. Returns the calls and the result."""
    from typer.testing import CliRunner

    from chaos import cli

    calls: list[str] = []

    def start(directory: Path, **options: object) -> None:
        SignalsItselfWhenCollected(signal.SIGINT)
        if writes_state:
            testbed.state_path(directory).write_text('{"written": "by this up"}')

    def down(directory: Path, say: object = None) -> list[str]:
        calls.append("down")
        if then is not None:
            os.kill(os.getpid(), then)
            time.sleep(0.1)
        calls.append("down finished")
        return []

    monkeypatch.setattr(cli.testbed_module, "up", start)
    monkeypatch.setattr(cli.testbed_module, "down", down)
    result = CliRunner().invoke(cli.app, ["testbed", "up", "--dir", str(directory)])
    return calls, result


def test_an_up_that_finished_despite_a_dropped_interrupt_takes_its_testbed_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over the state a testbed whose processes all died left: `up` starts over in its place.
    tmp_path.joinpath("testbed.json").write_text('{"written": "by a testbed long dead"}')
    calls, result = up_with_the_interrupt_dropped(monkeypatch, tmp_path, writes_state=True)
    assert calls == ["down", "down finished"]
    assert result.exit_code == 128 + signal.SIGINT, result.output


def test_an_interrupted_up_that_wrote_no_state_takes_down_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The state there is a running testbed's: only what this up started may be stopped.
    tmp_path.joinpath("testbed.json").write_text('{"written": "by a running testbed"}')
    calls, result = up_with_the_interrupt_dropped(monkeypatch, tmp_path, writes_state=False)
    assert calls == []
    assert result.exit_code == 128 + signal.SIGINT, result.output


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_does_not_cut_that_teardown_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: int
) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    calls, result = up_with_the_interrupt_dropped(
        monkeypatch, tmp_path, writes_state=True, then=second
    )
    assert calls == ["down", "down finished"]
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_block_that_was_not_signalled_ends_normally_and_the_handlers_are_restored() -> None:
    from chaos.cli import interruptible

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    with interruptible() as caught:
        pass
    assert caught == []
    assert {s: signal.getsignal(s) for s in before} == before
    assert sys.unraisablehook is hook


@pytest.mark.slow  # a small testbed starts: 3-6 s
def test_status_shows_a_shard_nodes_role_in_the_current_map_and_the_one_it_started_as(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from chaos.cli import app
    from ratequeue.topology import TOPOLOGY_KEY, Topology

    directory = tmp_path / "bed"
    with testbed.running_testbed(directory, shards=1, replicas=1, controllers=0, sensors=False):
        state = testbed.load_state(directory)
        control = redis.Redis.from_url(state.control)
        with control:
            # What a failover leaves: the replica appointed, the old primary out of the map.
            topology = Topology.model_validate_json(control.get(TOPOLOGY_KEY))
            shard = topology.shards[0]
            shard.primary, shard.replicas = shard.replicas[0], []
            control.set(TOPOLOGY_KEY, topology.model_dump_json())
        result = CliRunner().invoke(app, ["testbed", "status", "--dir", str(directory)],
                                    env={"COLUMNS": "300"})  # fmt: skip
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.output.splitlines() if line.count("│") > 3}  # fmt: skip
    assert rows["s0-primary"] == "not in the map (started as primary)", result.output
    assert rows["s0-replica1"] == "primary (started as replica)", result.output
