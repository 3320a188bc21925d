"""The docker fault backend against a real Docker engine: redis-server containers from the local
image `ratequeue-redis:local` (built by docker/redis-image.sh when missing) on host networking,
each on a free loopback port. Containers are started and removed with testcontainers (reaper
disabled: its image cannot be pulled here); every container is removed at teardown, also on
failure. With no engine reachable the whole module skips and says why.

Not for: the local or gremlin backends, or experiments (tests of the runner).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.types
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

from chaos.errors import FaultError
from chaos.experiments import load_experiment
from chaos.faults.base import NodeTarget
from chaos.faults.docker import DockerFaultBackend, engine_unavailable_reason
from chaos.faults.docker_leftovers import PendingDockerFaults
from chaos.runner import ExperimentRunner
from chaos.targets import Deployment
from common.redis_processes import free_port
from tests.docker_deployment import bridge_network

_UNAVAILABLE = engine_unavailable_reason()
if _UNAVAILABLE is not None:
    pytest.skip(f"docker fault backend tests need a Docker engine: {_UNAVAILABLE}",
                allow_module_level=True)  # fmt: skip

testcontainers_config.ryuk_disabled = True  # the reaper's image cannot be pulled (no registry)

IMAGE = "ratequeue-redis:local"
REPO = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = REPO / "docker" / "redis-image.sh"
LABEL = {"ratequeue.test": "docker-faults"}


@pytest.fixture(scope="module")
def image() -> str:
    """The local Redis image; built from the host's redis-server if it is not there yet."""
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        build = subprocess.run([str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, f"{IMAGE_SCRIPT} failed:\n{build.stdout}\n{build.stderr}"
    finally:
        client.close()
    return IMAGE


@pytest.fixture
def backend() -> Iterator[DockerFaultBackend]:
    backend = DockerFaultBackend(stop_timeout=2)
    yield backend
    backend.close()


def _connect(host: str, port: int, timeout: float = 0.5) -> redis.Redis:
    """A client that fails at once: redis-py's default retries would hide a timeout for seconds."""
    return redis.Redis(host=host, port=port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip


def _ping(port: int, timeout: float = 0.5, host: str = "127.0.0.1") -> bool:
    connection = _connect(host, port, timeout)
    try:
        return bool(connection.ping())
    finally:
        connection.close()


def _wait_ping(port: int, within: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if _ping(port, host=host):
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _status(name: str) -> str:
    client = docker.from_env()
    try:
        return client.containers.get(name).status
    finally:
        client.close()


class RedisContainer:
    def __init__(self, wrapped: DockerContainer, name: str, port: int) -> None:
        self.wrapped = wrapped
        self.name = name
        self.port = port

    def target(self) -> NodeTarget:
        return NodeTarget(name=self.name, role="primary", shard="s0", port=self.port,
                          container=self.name)  # fmt: skip


@pytest.fixture
def start_redis(image: str) -> Iterator[Callable[..., RedisContainer]]:
    started: list[DockerContainer] = []

    def start(host_network: bool = True) -> RedisContainer:
        name = f"rq-docker-fault-{uuid.uuid4().hex[:10]}"
        port = free_port(("127.0.0.1",)) if host_network else 6379
        command = ["--port", str(port), "--save", "", "--appendonly", "no"]
        if host_network:
            command += ["--bind", "127.0.0.1"]
            kwargs: dict[str, object] = {"network_mode": "host"}
        else:
            command += ["--protected-mode", "no"]
            kwargs = {}
        container = (
            DockerContainer(image)
            .with_name(name)
            .with_command(command)
            .with_kwargs(labels=LABEL, **kwargs)
        )
        started.append(container)
        container.start()
        if host_network:
            _wait_ping(port)
        return RedisContainer(container, name, port)

    yield start
    for container in started:
        wrapped = container._container
        try:
            if wrapped is not None:
                wrapped.reload()
                if wrapped.status == "paused":
                    wrapped.unpause()
        except docker.errors.DockerException:
            pass
        container.stop()  # removes it (force, with volumes)


def test_kill_stops_the_container(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis()
    fault = backend.inject("kill", node.target())
    assert _status(node.name) == "exited"
    assert fault.details["status"] == "exited"
    with pytest.raises(redis.ConnectionError):
        _ping(node.port)
    fault.rollback()  # no undo for a kill: it stays down
    assert _status(node.name) == "exited"


def test_pause_makes_ping_time_out_and_rollback_answers_again(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis()
    fault = backend.inject("pause", node.target())
    assert _status(node.name) == "paused"
    with pytest.raises(redis.TimeoutError):
        _ping(node.port, timeout=0.5)
    fault.rollback()
    fault.rollback()  # idempotent
    assert _ping(node.port)
    assert _status(node.name) == "running"


def test_stop_then_rollback_starts_it_again(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis()
    fault = backend.inject("stop", node.target(), timeout=2)
    assert _status(node.name) == "exited"
    with pytest.raises(redis.ConnectionError):
        _ping(node.port)
    fault.rollback()
    _wait_ping(node.port)
    assert _status(node.name) == "running"


def test_rolling_back_a_stop_of_a_container_already_exited_leaves_it_exited(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    # A killed old primary must not come back because a stop of it "succeeded" (304).
    node = start_redis()
    backend.inject("kill", node.target())
    fault = backend.inject("stop", node.target(), timeout=2)
    fault.rollback()
    assert _status(node.name) == "exited"


def test_missing_container_is_a_fault_error(backend: DockerFaultBackend) -> None:
    target = NodeTarget(name="ghost", role="primary", port=6399, container="rq-no-such-container")
    with pytest.raises(FaultError, match=r"rq-no-such-container.*does not exist"):
        backend.inject("kill", target)


def test_blackhole_on_host_network_is_refused_with_a_pointer_to_iptables(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis()
    with pytest.raises(FaultError, match="local backend's blackhole"):
        backend.inject("blackhole", node.target())
    assert _ping(node.port)


def test_blackhole_on_a_bridge_network_disconnects_and_rollback_reconnects(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis(host_network=False)
    client = docker.from_env()

    def address() -> str:
        settings = client.containers.get(node.name).attrs["NetworkSettings"]["Networks"]
        return next((n["IPAddress"] for n in settings.values() if n.get("IPAddress")), "")

    try:
        before = address()
        if not before:
            pytest.skip("this Docker engine gives bridge containers no address (--bridge=none?)")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _ping(6379, host=before)
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        fault = backend.inject("blackhole", node.target())
        assert fault.details["networks"] == {"bridge": before}
        assert address() == ""
        with pytest.raises(redis.RedisError):
            _ping(6379, host=before)
        fault.rollback()
        after = address()
        assert after
        assert _ping(6379, timeout=2, host=after)
    finally:
        client.close()


def test_timed_pause_rolls_itself_back(
    start_redis: Callable[..., RedisContainer], backend: DockerFaultBackend
) -> None:
    node = start_redis()
    fault = backend.inject("pause", node.target(), seconds=0.5)
    assert _status(node.name) == "paused"
    _wait_ping(node.port, within=5)
    deadline = time.monotonic() + 5
    while fault.rolled_back_at is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the timer records the rollback just after unpausing
    assert fault.rolled_back_at is not None
    assert _status(node.name) == "running"


def test_unreachable_engine_is_a_fault_error() -> None:
    backend = DockerFaultBackend(base_url="unix:///nonexistent/docker.sock", api_timeout=2)
    target = NodeTarget(name="n", role="primary", port=6399, container="whatever")
    with pytest.raises(FaultError, match="no Docker engine answers at unix:///nonexistent"):
        backend.inject("pause", target)
    assert not backend.supports("latency")
    with pytest.raises(FaultError, match="does not support 'latency'"):
        backend.inject("latency", target)


# -- a node on a client and a peer network (as on staging) -----------------------------------


@pytest.fixture
def two_networks() -> Iterator[tuple[str, str]]:
    """A client and a peer bridge network with subnets of their own (so a reconnect can ask
    for the old address), removed at teardown."""
    client = docker.from_env()
    names = [f"rq-test-{role}-{uuid.uuid4().hex[:8]}" for role in ("client", "peer")]
    try:
        for name in names:
            bridge_network(client, name, LABEL)
        yield names[0], names[1]
    finally:
        for network in client.networks.list(names=names):
            network.reload()
            for container in network.containers:
                network.disconnect(container, force=True)
            network.remove()
        client.close()


@dataclass
class TwoNetworkNode:
    name: str
    client_address: str
    peer_address: str
    peer_network: str

    def target(self) -> NodeTarget:
        return NodeTarget(name=self.name, role="primary", shard="s0", port=6379,
                          host=self.client_address, peer_host=self.peer_address,
                          container=self.name)  # fmt: skip


def _networks_of(name: str) -> dict[str, str]:
    client = docker.from_env()
    try:
        settings = client.containers.get(name).attrs["NetworkSettings"]["Networks"]
        return {network: s.get("IPAddress") or "" for network, s in settings.items()}
    finally:
        client.close()


@pytest.fixture
def two_network_node(
    image: str, two_networks: tuple[str, str]
) -> Iterator[Callable[[], TwoNetworkNode]]:
    client = docker.from_env()
    started = []

    def start() -> TwoNetworkNode:
        client_net, peer_net = two_networks
        name = f"rq-docker-fault-{uuid.uuid4().hex[:10]}"
        container = client.containers.create(
            image,
            ["--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            name=name,
            labels=LABEL,
            network=client_net,
        )
        started.append(container)
        client.networks.get(peer_net).connect(container)
        container.start()
        addresses = _networks_of(name)
        if not all(addresses.values()):
            pytest.skip("this Docker engine gives bridge containers no address")
        _wait_ping(6379, host=addresses[client_net])
        _wait_ping(6379, host=addresses[peer_net])
        return TwoNetworkNode(name, addresses[client_net], addresses[peer_net], peer_net)

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True, v=True)
    client.close()


def test_blackhole_of_a_node_with_a_peer_address_cuts_only_its_peer_network(
    two_network_node: Callable[[], TwoNetworkNode], backend: DockerFaultBackend
) -> None:
    node = two_network_node()
    fault = backend.inject("blackhole", node.target())
    assert fault.details["networks"] == {node.peer_network: node.peer_address}
    assert node.peer_network not in _networks_of(node.name)
    assert _ping(6379, host=node.client_address)  # clients still reach it
    with pytest.raises(redis.RedisError):
        _ping(6379, host=node.peer_address)
    fault.rollback()
    assert _networks_of(node.name)[node.peer_network] == node.peer_address  # the same address
    _wait_ping(6379, host=node.peer_address)


def test_a_rolled_back_fault_leaves_nothing_pending(
    two_network_node: Callable[[], TwoNetworkNode], tmp_path: Path
) -> None:
    node = two_network_node()
    pending = PendingDockerFaults(tmp_path)
    backend = DockerFaultBackend(pending=pending, stop_timeout=2)
    try:
        fault = backend.inject("blackhole", node.target())
        assert [e.target for e in pending.entries()] == [node.name]
        fault.rollback()
        assert pending.entries() == []
    finally:
        backend.close()


_KILLED_RUNNER = """
import os, sys
from pathlib import Path
from chaos.faults.base import NodeTarget
from chaos.faults.docker import DockerFaultBackend
from chaos.faults.docker_leftovers import PendingDockerFaults
backend = DockerFaultBackend(pending=PendingDockerFaults(Path(sys.argv[1])))
target = NodeTarget.model_validate_json(sys.argv[3])
backend.inject(sys.argv[2], target, seconds=300)
os.kill(os.getpid(), 9)  # dies with the fault in force and its timer never fired
"""


def _inject_and_die(journal_dir: Path, action: str, target: NodeTarget) -> None:
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_RUNNER, str(journal_dir), action, target.model_dump_json()],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert died.returncode == -9, died.stderr


def test_a_blackhole_left_by_a_killed_runner_is_undone_by_chaos_halt(
    two_network_node: Callable[[], TwoNetworkNode], tmp_path: Path
) -> None:
    node = two_network_node()
    _inject_and_die(tmp_path, "blackhole", node.target())
    assert node.peer_network not in _networks_of(node.name)  # the runner died; the cut stayed
    halted = subprocess.run(
        [sys.executable, "-m", "chaos", "halt", "--journal-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert halted.returncode == 0, halted.stdout + halted.stderr
    said = " ".join(halted.stdout.split())
    assert f"leftover fault of a killed run: blackhole of {node.name}" in said
    assert f"reconnected to {node.peer_network}" in said
    assert _networks_of(node.name)[node.peer_network] == node.peer_address
    _wait_ping(6379, host=node.peer_address)
    assert PendingDockerFaults(tmp_path).entries() == []


def test_a_pause_left_by_a_killed_runner_is_undone_and_named_in_the_next_runs_journal(
    start_redis: Callable[..., RedisContainer], tmp_path: Path
) -> None:
    node = start_redis()
    _inject_and_die(tmp_path, "pause", node.target())
    assert _status(node.name) == "paused"
    # The next run undoes it before anything else; this one then stops at its unreachable
    # control store, which does not matter here.
    nowhere = f"redis://127.0.0.1:{free_port(('127.0.0.1',))}/0"
    deployment = Deployment(name="t", api="http://127.0.0.1:1", control=nowhere)
    journal = ExperimentRunner(deployment, journal_dir=tmp_path).run(
        load_experiment(REPO / "scenarios" / "primary_pause.yaml")
    )
    assert len(journal.leftovers) == 1
    assert journal.leftovers[0].startswith(f"pause of {node.name}")
    assert journal.leftovers[0].endswith("unpaused")
    assert _status(node.name) == "running"
    assert _ping(node.port)


# -- written down before it is applied ---------------------------------------------------------

_DIES_DURING_STOP = """
import os, sys
from pathlib import Path
from docker.models.containers import Container
from chaos.faults.base import NodeTarget
from chaos.faults.docker import DockerFaultBackend
from chaos.faults.docker_leftovers import PendingDockerFaults

def stop_and_die(self, **kwargs):
    if self.status == "running":
        self.kill()  # the stop took effect ...
    os.kill(os.getpid(), 9)  # ... and the runner died before the engine answered

Container.stop = stop_and_die
backend = DockerFaultBackend(pending=PendingDockerFaults(Path(sys.argv[1])))
backend.inject("stop", NodeTarget.model_validate_json(sys.argv[2]), timeout=20)
"""


def test_a_runner_killed_while_its_stop_is_under_way_leaves_the_stop_written_down(
    start_redis: Callable[..., RedisContainer], tmp_path: Path
) -> None:
    node = start_redis()
    died = subprocess.run(
        [sys.executable, "-c", _DIES_DURING_STOP, str(tmp_path), node.target().model_dump_json()],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert died.returncode == -9, died.stderr
    assert _status(node.name) == "exited"
    [line] = PendingDockerFaults(tmp_path).undo_leftovers()
    assert line.startswith(f"stop of {node.name}")
    assert "written down before it was applied" in line and line.endswith("started")
    _wait_ping(node.port)
    assert PendingDockerFaults(tmp_path).entries() == []


def test_a_fault_that_cannot_be_written_down_is_refused_and_not_applied(
    start_redis: Callable[..., RedisContainer], tmp_path: Path
) -> None:
    node = start_redis()
    (tmp_path / "journals").write_text("a file where the journal directory should be")
    backend = DockerFaultBackend(pending=PendingDockerFaults(tmp_path / "journals"))
    try:
        with pytest.raises(FaultError, match="not applied: it could not be written down first"):
            backend.inject("pause", node.target())
    finally:
        backend.close()
    assert _status(node.name) == "running"


def test_undoing_a_stop_written_down_for_a_container_already_exited_leaves_it_exited(
    start_redis: Callable[..., RedisContainer], tmp_path: Path
) -> None:
    node = start_redis()
    backend = DockerFaultBackend(stop_timeout=2)
    try:
        backend.inject("kill", node.target())  # down before any stop was asked for
    finally:
        backend.close()
    died = subprocess.run(
        [sys.executable, "-c", _DIES_DURING_STOP, str(tmp_path), node.target().model_dump_json()],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert died.returncode == -9, died.stderr
    [line] = PendingDockerFaults(tmp_path).undo_leftovers()
    assert line.endswith("left exited: it was exited before the fault")
    assert _status(node.name) == "exited"


def test_a_rollback_refuses_to_reconnect_under_another_address_when_the_old_one_is_taken(
    two_network_node: Callable[[], TwoNetworkNode], image: str, tmp_path: Path
) -> None:
    node = two_network_node()
    pending = PendingDockerFaults(tmp_path)
    backend = DockerFaultBackend(pending=pending, stop_timeout=2)
    client = docker.from_env()
    squatter = None
    try:
        fault = backend.inject("blackhole", node.target())
        squatter = client.containers.create(image, ["--port", "6379"], labels=LABEL,
                                            name=f"rq-squatter-{uuid.uuid4().hex[:8]}")  # fmt: skip
        client.networks.get(node.peer_network).connect(squatter, ipv4_address=node.peer_address)
        squatter.start()
        with pytest.raises(FaultError, match=f"its old address {node.peer_address} cannot be had"):
            fault.rollback()
        # Off the peer network (the engine may keep the network listed, with no address).
        assert _networks_of(node.name).get(node.peer_network, "") == ""
        assert [e.target for e in pending.entries()] == [node.name]  # kept for a later try
    finally:
        if squatter is not None:
            squatter.remove(force=True)
        backend.close()
        client.close()
    assert fault.rollback() is None  # the address is free again: the rollback goes through
    assert _networks_of(node.name)[node.peer_network] == node.peer_address
    assert fault.details["reconnected"] == [
        f"{node.peer_network} with its old address {node.peer_address}"
    ]
    assert pending.entries() == []


def test_a_blackhole_that_cuts_more_than_the_peer_path_says_so(
    two_network_node: Callable[[], TwoNetworkNode], backend: DockerFaultBackend
) -> None:
    node = two_network_node()
    every = set(_networks_of(node.name))
    target = node.target().model_copy(update={"peer_host": "10.0.0.254"})  # on no network of it
    fault = backend.inject("blackhole", target)
    try:
        assert set(fault.details["networks"]) == every
        assert (
            "no network of the container has its peer address 10.0.0.254" in (fault.details["note"])
        )
    finally:
        fault.rollback()
