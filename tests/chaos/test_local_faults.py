"""The local fault backend against real redis-server processes: signals by pid, the iptables
blackhole of the peer path, the latency proxy, refusal of a pid that runs something else, and
idempotent rollbacks. Each test uses its own iptables chain, removed at teardown with every
rule, proxy and process the test started (also on failure)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.iptables import iptables_unavailable_reason
from chaos.processes import running
from common.redis_processes import free_port, redis_server_binary
from ratequeue import local_cluster
from ratequeue.local_cluster import ShardNode

NO_IPTABLES = iptables_unavailable_reason()
needs_iptables = pytest.mark.skipif(
    NO_IPTABLES is not None, reason=f"network faults need iptables: {NO_IPTABLES}"
)


class Recorder:
    """A backend whose faults are all rolled back, and whose chain is removed, at teardown."""

    def __init__(self) -> None:
        self.backend = LocalFaultBackend(chain=f"RQT{uuid.uuid4().hex[:10].upper()}")
        self.faults: list[InjectedFault] = []

    def inject(self, action: str, target: NodeTarget, **params: object) -> InjectedFault:
        fault = self.backend.inject(action, target, **params)
        self.faults.append(fault)
        return fault

    def close(self) -> None:
        for fault in reversed(self.faults):
            with contextlib.suppress(FaultError):
                fault.rollback()
        if NO_IPTABLES is None:
            self.backend.cleanup_all()


@pytest.fixture
def faults() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., ShardNode]]:
    started: list[ShardNode] = []

    def start(name: str = "s0-primary", replica_of: ShardNode | None = None) -> ShardNode:
        role = "replica" if replica_of else "primary"
        node = local_cluster.start_node(name, role, "s0", tmp_path)  # boots parked
        started.append(node)
        if replica_of is None:
            node.appoint(1, min_replicas=0)  # fault tests: replicas are optional
        else:
            node.attach_to(replica_of)
        return node

    yield start
    for node in reversed(started):
        node.stop()


def target_of(node: ShardNode) -> NodeTarget:
    return NodeTarget(name=node.name, role=node.role, shard=node.shard, host=node.host,
                      port=node.port, peer_host=node.peer_host, pid=node.pid)  # fmt: skip


def ping_seconds(host: str, port: int, timeout: float = 1.0) -> float | None:
    """Seconds one PING takes on a fresh connection (after a first one), None if it fails."""
    conn = redis.Redis(host=host, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip
    try:
        conn.ping()
        began = time.monotonic()
        conn.ping()
        return time.monotonic() - began
    except redis.RedisError:
        return None
    finally:
        conn.close()


def link_status(replica: ShardNode) -> str:
    return str(replica.replication().get("master_link_status"))


def wait_until(probe: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not probe():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - began


def iptables_save() -> str:
    """Every table's rules, as `iptables-save` prints them."""
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def test_kill_stops_the_process(faults: Recorder, start_node: Callable[..., ShardNode]) -> None:
    node = start_node()
    fault = faults.inject("kill", target_of(node))
    assert node.process is not None and node.process.wait(timeout=5) == -9
    assert not running(node.pid)
    assert fault.undo is None and fault.details["exited"]


def test_pause_makes_ping_time_out_and_rollback_resumes(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    fault = faults.inject("pause", target_of(node))
    assert ping_seconds(node.host, node.port, timeout=0.5) is None
    fault.rollback()
    assert ping_seconds(node.host, node.port) is not None


def test_pause_with_seconds_rolls_back_by_itself(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    fault = faults.inject("pause", target_of(node), seconds=0.5)
    assert ping_seconds(node.host, node.port, timeout=0.2) is None
    wait_until(lambda: fault.rolled_back_at is not None, timeout=5)
    assert ping_seconds(node.host, node.port) is not None


def test_stop_without_restart_has_no_undo_and_with_restart_comes_back(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    plain = faults.inject("stop", target_of(node))
    assert plain.undo is None and "no restart" in plain.details["undo"]
    assert ping_seconds(node.host, node.port, timeout=0.5) is None

    node.restart()
    fault = faults.inject("stop", target_of(node), restart=node.restart)
    assert ping_seconds(node.host, node.port, timeout=0.5) is None
    fault.rollback()
    assert ping_seconds(node.host, node.port) is not None


def test_a_failed_restart_is_reported_and_never_started_twice(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    # A command that starts but never opens the port: the restart's wait times out.
    fault = faults.inject("stop", target_of(node), command=["sleep", "30"], wait_seconds=0.3)
    try:
        with pytest.raises(FaultError, match="does not accept connections"):
            fault.rollback()
        first = fault.details["restarted"]["pid"]
        assert running(first)
        with pytest.raises(FaultError, match="already attempted"):
            fault.rollback()  # as the run's roll_back does after a timer's failed one
        assert fault.details["restarted"]["pid"] == first
    finally:
        with contextlib.suppress(ProcessLookupError, KeyError):
            os.kill(fault.details["restarted"]["pid"], signal.SIGKILL)


def test_a_pid_running_another_program_is_refused(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    other = subprocess.Popen(["sleep", "60"])
    try:
        wait_until(lambda: "sleep" in Path(f"/proc/{other.pid}/cmdline").read_text(), 5)
        for action in ("kill", "pause", "stop"):
            with pytest.raises(FaultError, match="refusing"):
                faults.inject(action, target_of(node).model_copy(update={"pid": other.pid}))
        assert other.poll() is None and running(other.pid)
        # A redis-server on another port is not this node either.
        stranger = start_node("s1-primary")
        with pytest.raises(FaultError, match="refusing"):
            faults.inject("kill", target_of(node).model_copy(update={"pid": stranger.pid}))
        assert running(stranger.pid)
    finally:
        other.kill()
        other.wait()


@needs_iptables
def test_blackhole_cuts_the_peer_path_only_and_rollback_restores_it(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    primary = start_node()
    replica = start_node("s0-replica1", replica_of=primary)
    wait_until(lambda: link_status(replica) == "up", timeout=15)

    fault = faults.inject("blackhole", target_of(primary))
    fault_tag = fault.details["comment"]
    assert fault_tag in iptables_save()
    assert ping_seconds(primary.peer_host, primary.port, timeout=0.5) is None
    assert ping_seconds(primary.host, primary.port) is not None
    # The established replication link (replica -> 127.0.0.2) goes down within repl-timeout.
    wait_until(lambda: link_status(replica) != "up", timeout=5 + 3)

    fault.rollback()
    assert fault_tag not in iptables_save()
    assert ping_seconds(primary.peer_host, primary.port) is not None
    wait_until(lambda: link_status(replica) == "up", timeout=20)


@needs_iptables
def test_latency_delays_the_peer_path_only_and_rollback_removes_it(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    fault = faults.inject("latency", target_of(node), latency_ms=300)
    proxy_pid = fault.details["proxy_pid"]
    assert fault.details["comment"] in iptables_save()

    peer = ping_seconds(node.peer_host, node.port, timeout=3)
    client = ping_seconds(node.host, node.port)
    assert peer is not None and peer >= 0.3
    assert client is not None and client < 0.1

    fault.rollback()
    assert fault.details["comment"] not in iptables_save()
    assert not running(proxy_pid)
    after = ping_seconds(node.peer_host, node.port)
    assert after is not None and after < 0.1


@needs_iptables
def test_rollback_is_idempotent(faults: Recorder, start_node: Callable[..., ShardNode]) -> None:
    node = start_node()
    pause = faults.inject("pause", target_of(node))
    pause.rollback()
    pause.rollback()
    assert ping_seconds(node.host, node.port) is not None

    blackhole = faults.inject("blackhole", target_of(node))
    latency = faults.inject("latency", target_of(node), latency_ms=50)
    blackhole.rollback()
    blackhole.rollback()
    # Even after a cleanup removed everything behind the faults' backs, rollbacks succeed.
    faults.backend.cleanup_all()
    assert faults.backend.rules() == []
    latency.rollback()
    latency.rollback()
    assert latency.rollback_error is None and blackhole.rollback_error is None
    assert ping_seconds(node.peer_host, node.port) is not None


@needs_iptables
def test_cleanup_all_removes_every_rule_of_the_chain(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    faults.inject("blackhole", target_of(node))
    faults.inject("blackhole", target_of(node), ports=[node.port, node.port + 1])
    chain = faults.backend.iptables.chain
    assert chain in iptables_save()
    assert faults.backend.cleanup_all() == 6
    assert chain not in iptables_save()
    assert ping_seconds(node.peer_host, node.port) is not None


def test_unknown_params_and_roles_are_refused(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    node = start_node()
    with pytest.raises(FaultError, match="latency_ms"):
        faults.inject("pause", target_of(node), latency_ms=5)
    with pytest.raises(FaultError, match="expect"):
        faults.inject("pause", target_of(node).model_copy(update={"role": "mystery"}))
    with pytest.raises(FaultError, match="start needs"):
        faults.inject("start", target_of(node))
    assert ping_seconds(node.host, node.port) is not None


def test_start_runs_the_command_and_waits_for_the_port(faults: Recorder, tmp_path: Path) -> None:
    port = free_port()
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "127.0.0.2",
            "--save", "", "--dir", str(tmp_path)]  # fmt: skip
    target = NodeTarget(name="s9-primary", role="primary", port=port, peer_host="127.0.0.2")
    fault = faults.inject("start", target, command=argv)
    pid = fault.details["pid"]
    try:
        assert fault.undo is None
        assert ping_seconds("127.0.0.1", port) is not None
        # The started node is a target like any other.
        faults.inject("kill", target.model_copy(update={"pid": pid}))
        wait_until(lambda: not running(pid), timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_iptables
def test_a_blackhole_from_one_node_cuts_only_that_nodes_path(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    primary = start_node()
    cut = start_node("s0-replica1", replica_of=primary)
    kept = start_node("s0-replica2", replica_of=primary)
    wait_until(lambda: link_status(cut) == link_status(kept) == "up", timeout=15)

    fault = faults.inject("blackhole", target_of(primary), from_target=target_of(cut))
    group = fault.details["cgroup"]
    assert group in Path(f"/proc/{cut.pid}/cgroup").read_text()
    wait_until(lambda: link_status(cut) != "up", timeout=5 + 3)
    assert link_status(kept) == "up"
    assert ping_seconds(primary.peer_host, primary.port) is not None

    fault.rollback()
    assert group not in Path(f"/proc/{cut.pid}/cgroup").read_text()
    assert fault.details["comment"] not in iptables_save()
    wait_until(lambda: link_status(cut) == "up", timeout=20)


@needs_iptables
def test_a_second_blackhole_from_a_process_already_cut_off_is_refused_and_the_first_holds(
    faults: Recorder, start_node: Callable[..., ShardNode]
) -> None:
    # A second group would take the process out of the first's, whose cgroup rule would then
    # match none of its new connections: the first fault silently disarmed.
    primary = start_node()
    other = start_node("s1-primary")
    cut = start_node("s0-replica1", replica_of=primary)
    wait_until(lambda: link_status(cut) == "up", timeout=15)

    first = faults.inject("blackhole", target_of(primary), from_target=target_of(cut))
    with pytest.raises(FaultError, match="already cut off by another fault"):
        faults.inject("blackhole", target_of(other), from_target=target_of(cut))
    assert first.details["cgroup"] in Path(f"/proc/{cut.pid}/cgroup").read_text()
    wait_until(lambda: link_status(cut) != "up", timeout=5 + 3)
    first.rollback()
    wait_until(lambda: link_status(cut) == "up", timeout=20)
