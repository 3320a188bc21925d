"""What the end-to-end failover tests share: the testbed's topology and processes, waiting for a
condition, and which nodes of a shard answer as primaries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import redis

from chaos.processes import running
from chaos.testbed import TestbedNode, TestbedState, process_alive
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import opened_coordination_store
from ratequeue.local_cluster import start_node
from ratequeue.topology import NodeRef, Topology
from tests.prometheus_samples import metric_samples
from tests.suite_control import up_args_on_suite_control

T = TypeVar("T")

# Load small enough for 2 cores, large enough that a failover happens mid-stream.
LOAD = {"numbers": 40, "enqueue_per_second": 40, "producers": 4, "consumers": 2,
        "lease_seconds": 5, "give_up_after": 30}  # fmt: skip


REPO = Path(__file__).resolve().parents[2]


def chaos_command(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """`python -m chaos ARGS` in a fresh interpreter, from the repository."""
    return subprocess.run([sys.executable, "-m", "chaos", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)  # fmt: skip


@contextlib.contextmanager
def cli_testbed(directory: Path, *up_args: str) -> Iterator[TestbedState]:
    """`ratequeue-chaos testbed up --dir DIRECTORY UP_ARGS` (on the suite's control store,
    `tests/suite_control.py`) for a `with` block, then `down`;
    fails if any process `up` started is still running after it (and stops it regardless)."""
    state_file = directory / "testbed.json"
    nodes: list[TestbedNode] = []
    try:
        up_args = up_args_on_suite_control(up_args)
        up = chaos_command("testbed", "up", "--dir", str(directory), *up_args)
        assert up.returncode == 0, up.stdout + up.stderr
        state = TestbedState.model_validate_json(state_file.read_text())
        nodes = list(state.nodes)
        yield state
    finally:
        if state_file.exists():
            chaos_command("testbed", "down", "--dir", str(directory))
        left = [node for node in nodes if running(node.pid)]
        for node in left:  # should `down` fail, still stop what `up` started
            with contextlib.suppress(ProcessLookupError):
                if process_alive(node):
                    os.kill(node.pid, signal.SIGKILL)
    assert not left, [node.name for node in left]


def topology(state: TestbedState) -> Topology:
    return Topology.model_validate(httpx.get(f"{state.api}/v1/topology", timeout=5).json())


def in_store(state: TestbedState, use: Callable[[CoordinationStore], Awaitable[T]]) -> T:
    """What `use` answers from the testbed's coordination store (opened for it, then closed)."""

    async def run() -> T:
        async with opened_coordination_store(state.store_address()) as store:
            return await use(store)

    return asyncio.run(run())


def control_topology(state: TestbedState) -> Topology:
    topology = in_store(state, lambda store: store.topology.load())
    assert topology is not None, "no topology in the control store"
    return topology


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30,
             interval: float = 0.1) -> T:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def pid_of(state: TestbedState, name: str) -> int:
    return state.node(name).pid


def send(state: TestbedState, name: str, signum: int) -> None:
    os.kill(pid_of(state, name), signum)


def role(node: NodeRef) -> str | None:
    try:
        with redis.Redis(host=node.host, port=node.port, socket_timeout=1,
                         socket_connect_timeout=1) as conn:  # fmt: skip
            return conn.info("replication")["role"]
    except (redis.RedisError, OSError):
        return None


def primaries_answering(state: TestbedState, shard_id: str) -> list[str]:
    """Nodes of the shard (primary, replicas and held former primaries) that answer as masters."""
    shard = control_topology(state).shard(shard_id)
    nodes = [shard.primary, *shard.replicas, *shard.forensics]
    return [n.name for n in nodes if role(n) == "master"]


def failed_over(state: TestbedState, shard_id: str, old_primary: str) -> Topology | None:
    current = control_topology(state)
    return current if current.shard(shard_id).primary.name != old_primary else None


def lazarus_events(state: TestbedState, **params: object) -> list[dict]:
    answer = httpx.get(f"{state.lazarus[0]}/v1/events", params=params, timeout=5)
    return answer.json()["events"]


def controllers_metric(state: TestbedState, sample_name: str, **labels: str) -> float:
    """A sample of the controllers' /metrics with these labels, summed over every node."""
    total = 0.0
    for url in state.lazarus:
        samples = metric_samples(httpx.get(f"{url}/metrics", timeout=5).text)
        total += sum(
            value
            for (name, sample_labels), value in samples.items()
            if name == sample_name
            and all(dict(sample_labels).get(k) == v for k, v in labels.items())
        )
    return total


def resume(state: TestbedState, name: str) -> None:
    """SIGCONT, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        send(state, name, signal.SIGCONT)


def restart_with_boot_arguments(directory: Path, node: TestbedNode) -> int:
    """Start a node again as the testbed started it: same flags, port and data directory (the
    testbed's `down` sweeps it)."""
    assert node.shard is not None
    again = start_node(
        node.name, node.role, node.shard, directory / "redis", port=node.port, detached=True
    )
    return again.pid


def auth(state: TestbedState) -> dict[str, str]:
    """The header of the controllers' mutating endpoints."""
    return {"Authorization": f"Bearer {state.lazarus_token}"}


def decided(state: TestbedState, event_id: str, timeout: float = 20) -> dict:
    """The event's audit record once a controller decided it."""

    def probe() -> dict | None:
        answer = httpx.get(f"{state.lazarus[0]}/v1/events/{event_id}", timeout=5)
        if answer.status_code == 200 and answer.json()["outcome"] != "received":
            return answer.json()
        return None

    return wait_for(f"event {event_id} to be decided", probe, timeout=timeout)
