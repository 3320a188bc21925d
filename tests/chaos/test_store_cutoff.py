"""Cutting a store node off (`blackhole` with `whole_node`, what the chaos runner does to a
`control_store` or `etcd_member` target on the local backend), on real processes: the node
runs on, but nobody reaches it and it reaches nobody, until the rollback; a cut-off a killed run
left is undone by the next run or by `chaos halt --target`, not while a chaos run lives here.

Not for: the peer-path blackhole of shard nodes (tests/chaos/test_local_faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner, Result

from chaos.cli import app as chaos_app
from chaos.errors import FaultError
from chaos.experiments import FaultStep, Selector
from chaos.fault_phase import FaultPhase
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.cgroups import cgroup2_mount
from chaos.journal import Journal
from chaos.processes import live_fault_makers, running
from chaos.targets import from_testbed
from chaos.testbed import TestbedNode, TestbedState
from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster, EtcdMember
from common.redis_processes import RedisProcess
from ratequeue.local_cluster import start_node
from tests.chaos.test_local_faults import (
    Recorder,
    faults,  # noqa: F401 (the fixture)
    iptables_save,
    needs_iptables,
    ping_seconds,
    wait_until,
)

pytestmark = needs_iptables


@pytest.fixture
def control(tmp_path: Path) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path)
    yield node
    node.stop()


def control_target(node: RedisProcess) -> NodeTarget:
    return NodeTarget(name=node.name, role="control", port=node.port, pid=node.pid)


def member_target(member: EtcdMember) -> NodeTarget:
    return NodeTarget(name=member.name, role="etcd", port=member.client_port, pid=member.pid)


def cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


def cgroup_exists(name: str) -> bool:
    root = cgroup2_mount()
    assert root is not None
    return (root / name).exists()


def test_a_cut_off_control_redis_answers_no_client_held_or_new_until_rolled_back(
    faults: Recorder,  # noqa: F811
    control: RedisProcess,
) -> None:
    held = redis.Redis(port=control.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    held.ping()
    original = cgroup_of(control.pid)
    fault = faults.inject("blackhole", control_target(control), whole_node=True)
    try:
        assert fault.details["ports"] == [control.port]
        assert cgroup_of(control.pid) == f"/{fault.details['cgroup']}"
        assert ping_seconds("127.0.0.1", control.port, timeout=0.5) is None
        with pytest.raises(redis.TimeoutError):  # silence, not a refusal: it runs on
            held.ping()
        assert running(control.pid)

        fault.rollback()
        assert fault.details["comment"] not in iptables_save()
        assert cgroup_of(control.pid) == original
        assert not cgroup_exists(fault.details["cgroup"])
        wait_until(lambda: ping_seconds("127.0.0.1", control.port) is not None, timeout=5)
    finally:
        held.close()


def test_before_a_run_the_cut_offs_a_dead_run_left_on_its_deployment_are_undone_and_named(
    faults: Recorder,  # noqa: F811
    control: RedisProcess,
    tmp_path: Path,
) -> None:
    other = start_node("other-control", "control", None, tmp_path / "other")
    try:
        # A run died with both cut off; the next run's deployment has only `control`.
        mine = faults.inject("blackhole", control_target(control), whole_node=True)
        not_mine = faults.inject("blackhole", control_target(other), whole_node=True)
        node = TestbedNode(name="control", role="control", host="127.0.0.1", port=control.port,
                           pid=control.pid, command=["redis-server"])  # fmt: skip
        state = TestbedState(api="http://127.0.0.1:1", control=control.url, nodes=[node])
        phase = FaultPhase(from_testbed(state, tmp_path), None, rng=random.Random(0),  # type: ignore[arg-type]
                           stop=threading.Event(), say=lambda _: None,
                           backends={"local": faults.backend})  # fmt: skip
        journal = Journal(run_id="r", experiment="e", deployment="d", environment="dev",
                          started_at=0.0)  # fmt: skip

        phase.remove_leftovers(journal)

        [entry] = [e for e in journal.timeline if e.name == "leftovers_removed"]
        assert mine.details["comment"] in entry.detail
        assert mine.details["comment"] not in iptables_save()
        assert not cgroup_exists(mine.details["cgroup"])
        wait_until(lambda: ping_seconds("127.0.0.1", control.port) is not None, timeout=5)
        assert not_mine.details["comment"] in iptables_save()
        assert ping_seconds("127.0.0.1", other.port, timeout=0.5) is None
    finally:
        faults.close()
        other.stop()


def test_a_cut_off_node_leaves_another_processs_connection_from_the_same_port_number_alone(
    faults: Recorder,  # noqa: F811
    control: RedisProcess,
) -> None:
    # The control Redis opens a connection of its own (to a "primary" that is this test)...
    primary, elsewhere = (
        socket.create_server(("127.0.0.1", 0)),
        socket.create_server(("127.0.0.1", 0)),
    )
    with primary, elsewhere:
        control.client().replicaof("127.0.0.1", primary.getsockname()[1])
        primary.settimeout(5)
        held, (_, opened_port) = primary.accept()
        # ...and another process uses the same local port number, from another address.
        bystander = socket.create_connection(
            elsewhere.getsockname(), source_address=("127.0.0.3", opened_port)
        )
        peer, _ = elsewhere.accept()
        with held, bystander, peer:
            fault = faults.inject("blackhole", control_target(control), whole_node=True)

            bystander.sendall(b"still here")
            peer.settimeout(2)
            assert peer.recv(16) == b"still here"
            peer.sendall(b"and back")
            bystander.settimeout(2)
            assert bystander.recv(16) == b"and back"
            primary_port = primary.getsockname()[1]
            assert fault.details["opened"] == [f"127.0.0.1:{opened_port}->127.0.0.1:{primary_port}"]
            fault.rollback()
            control.client().replicaof("no", "one")


def test_a_blackhole_step_on_the_control_store_cuts_the_whole_node(
    faults: Recorder,  # noqa: F811
    control: RedisProcess,
    tmp_path: Path,
) -> None:
    node = TestbedNode(name="control", role="control", host="127.0.0.1", port=control.port,
                       pid=control.pid, command=["redis-server"])  # fmt: skip
    state = TestbedState(api="http://127.0.0.1:1", control=control.url, nodes=[node])
    deployment = from_testbed(state, tmp_path)
    phase = FaultPhase(deployment, None, rng=random.Random(0), stop=threading.Event(),  # type: ignore[arg-type]
                       say=lambda _: None, backends={"local": faults.backend})  # fmt: skip
    step = FaultStep(action="blackhole", target=Selector(role="control_store"))
    fault = phase.inject(step, deployment.node("control"))
    faults.faults.append(fault)
    assert fault.details["whole_node"] and fault.details["ports"] == [control.port]
    assert ping_seconds("127.0.0.1", control.port, timeout=0.5) is None


async def _put(endpoints: list[str], key: str) -> None:
    async with EtcdClient(EtcdClientSettings(endpoints=endpoints, call_timeout=5.0)) as client:
        await client.put(key, b"written while it was cut off")


async def _read(endpoint: str, key: str) -> bytes | None:
    async with EtcdClient(EtcdClientSettings(endpoints=[endpoint], call_timeout=2.0)) as client:
        found = await client.get(key)
        return None if found is None else found.value


def test_a_cut_off_etcd_leader_loses_its_lead_and_catches_up_after_the_rollback(
    faults: Recorder,  # noqa: F811
    etcd: EtcdCluster,
) -> None:
    leader = etcd.wait_for_leader()
    fault = faults.inject("blackhole", member_target(leader), whole_node=True)
    assert leader.status() is None and running(leader.pid)
    # Its heartbeats no longer reach the others either: they elect one of their own.
    etcd.wait_for_leader(other_than=leader)
    others = [m.client_url for m in etcd.members if m is not leader]
    asyncio.run(_put(others, "/cut-off/probe"))

    fault.rollback()
    wait_until(lambda: leader.status() is not None, timeout=10)
    written = b"written while it was cut off"
    wait_until(lambda: asyncio.run(_read(leader.client_url, "/cut-off/probe")) == written,
               timeout=10)  # fmt: skip


def _target_file(control: RedisProcess, directory: Path) -> Path:
    """A testbed.json naming `control` (with its pid): what `chaos halt --target` reads."""
    node = TestbedNode(name="control", role="control", host="127.0.0.1", port=control.port,
                       pid=control.pid, command=["redis-server"])  # fmt: skip
    state = TestbedState(api="http://127.0.0.1:1", control=control.url, nodes=[node])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "testbed.json"
    path.write_text(state.model_dump_json())
    return path


def halt_with_target(control: RedisProcess, tmp_path: Path) -> Result:
    target = _target_file(control, tmp_path / "bed")
    journals = tmp_path / "journals"
    journals.mkdir(exist_ok=True)  # the killed run's: `halt` refuses a directory not there
    return CliRunner().invoke(chaos_app, ["halt", "--journal-dir", str(journals),
                                          "--target", str(target)])  # fmt: skip


@pytest.fixture
def left_cut_off(control: RedisProcess) -> Iterator[InjectedFault]:
    """The control store cut off by a run on the default chain that was killed: no rollback
    ran (the test's clean-up does it, if the test did not; and removes the chain if the test
    made it)."""
    backend = LocalFaultBackend()
    chain_was_there = (
        bool(backend.rules())
        or backend.iptables.run("filter", "-S", backend.iptables.chain, check=False).returncode == 0
    )
    left = backend.inject("blackhole", control_target(control), whole_node=True)
    yield left
    with contextlib.suppress(FaultError):
        left.rollback()
    if not chain_was_there:
        backend.cleanup_all()


@pytest.fixture
def no_other_chaos_command() -> None:
    """Another chaos command on this host (a second suite's soak) would rightly stop `halt`
    from undoing anything: such a test cannot tell its case then."""
    if makers := live_fault_makers():
        pytest.skip(f"another chaos command runs on this host: {makers[0]}")


def halt_while_running(
    control: RedisProcess, tmp_path: Path, program: str, *args: str
) -> tuple[Result, subprocess.Popen]:
    """`chaos halt --target` while a process lives whose command line reads
    `python .../PROGRAM ARGS` (as a console script's does); the process, stopped since."""
    script = tmp_path / program
    script.write_text("import time\ntime.sleep(60)\n")
    other = subprocess.Popen([sys.executable, str(script), *args])
    try:
        return halt_with_target(control, tmp_path), other
    finally:
        other.kill()
        other.wait()


@pytest.mark.usefixtures("no_other_chaos_command")
def test_chaos_halt_with_the_target_undoes_a_killed_runs_cut_off_on_it_and_names_it(
    control: RedisProcess, left_cut_off: InjectedFault, tmp_path: Path
) -> None:
    halted = halt_with_target(control, tmp_path)

    assert halted.exit_code == 0, halted.output
    said = " ".join(halted.output.split())
    assert f"leftover fault of a killed run: blackhole {left_cut_off.details['comment']}" in said
    assert left_cut_off.details["comment"] not in iptables_save()
    assert not cgroup_exists(left_cut_off.details["cgroup"])
    wait_until(lambda: ping_seconds("127.0.0.1", control.port) is not None, timeout=5)


@pytest.mark.parametrize(
    ("program", "args"),
    [("ratequeue-chaos", ["run", "primary_kill.yaml"]),
     ("chaos", ["--log-file", "ctk.log", "run", "experiment.json"])],  # Chaos Toolkit's
    ids=["ratequeue-chaos run", "chaostoolkit run"],
)  # fmt: skip
def test_chaos_halt_leaves_a_cut_off_alone_while_a_chaos_run_lives_on_this_host(
    control: RedisProcess, left_cut_off: InjectedFault, tmp_path: Path, program: str,
    args: list[str],
) -> None:  # fmt: skip
    # The cut-off may be that run's own, by design.
    halted, other_run = halt_while_running(control, tmp_path, program, *args)

    assert halted.exit_code == 1, halted.output
    said = " ".join(halted.output.split())
    assert "chaos commands still run on this host and may own them (" in said
    assert f"{other_run.pid}: {sys.executable} {tmp_path / program} {' '.join(args)}" in said
    assert left_cut_off.details["comment"] in iptables_save()
    assert ping_seconds("127.0.0.1", control.port, timeout=0.5) is None


@pytest.mark.usefixtures("no_other_chaos_command")
def test_chaos_halt_undoes_a_cut_off_while_only_a_harmless_chaos_command_lives_here(
    control: RedisProcess, left_cut_off: InjectedFault, tmp_path: Path
) -> None:
    halted, _ = halt_while_running(control, tmp_path, "ratequeue-chaos", "validate", "a.yaml")

    assert halted.exit_code == 0, halted.output
    assert left_cut_off.details["comment"] not in iptables_save()
