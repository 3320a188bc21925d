"""The local testbed: a whole deployment on loopback (control store, shards, ratequeue API),
started in the background and described by `DIR/testbed.json` so other commands can find it.

`up` returns with everything running; `down` stops exactly the processes `up` started (checked
by command line, so a recycled pid is never killed). Not for: faults (see the fault backends).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

from ratequeue.redis_processes import CLIENT_HOST, LocalCluster, free_port

STATE_FILE = "testbed.json"


class TestbedNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: str  # control | primary | replica | api
    shard: str | None = None
    host: str
    port: int
    pid: int


class TestbedState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api: str
    control: str
    nodes: list[TestbedNode]
    lazarus: list[str] = []

    def node(self, name: str) -> TestbedNode:
        return next(n for n in self.nodes if n.name == name)


class TestbedError(RuntimeError):
    pass


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> TestbedState:
    path = state_path(directory)
    if not path.exists():
        raise TestbedError(f"no testbed in {directory} ({STATE_FILE} not found)")
    return TestbedState.model_validate_json(path.read_text())


def _expected_program(node: TestbedNode) -> str:
    return "redis-server" if node.role in {"control", "primary", "replica"} else "ratequeue"


def process_alive(node: TestbedNode) -> bool:
    """True if the node's pid still runs the program the testbed started there."""
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{node.pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _expected_program(node) in cmdline


def start_api(
    directory: Path, control_url: str, extra_args: list[str] | None = None
) -> TestbedNode:
    port = free_port((CLIENT_HOST,))
    log = (directory / "logs").joinpath("api.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratequeue", "serve", "--control", control_url,
             "--host", CLIENT_HOST, "--port", str(port), *(extra_args or [])],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    node = TestbedNode(name="api", role="api", host=CLIENT_HOST, port=port, pid=process.pid)
    url = f"http://{CLIENT_HOST}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TestbedError(f"ratequeue API exited at start; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return node
        time.sleep(0.1)
    _terminate(node)
    raise TestbedError(f"ratequeue API not healthy within 20 s; see {log}")


def up(directory: Path, *, shards: int = 3, replicas: int = 2) -> TestbedState:
    """Start a testbed in `directory` and leave it running."""
    directory.mkdir(parents=True, exist_ok=True)
    if state_path(directory).exists():
        existing = load_state(directory)
        if any(process_alive(n) for n in existing.nodes):
            raise TestbedError(f"a testbed is already running in {directory}; run down first")
    cluster = LocalCluster.start(directory / "redis", shards=shards, replicas=replicas,
                                 detached=True)  # fmt: skip
    nodes = [
        TestbedNode(name=n.name, role=n.role, shard=n.shard, host=n.host, port=n.port, pid=n.pid)
        for n in cluster.nodes()
    ]
    try:
        api = start_api(directory, cluster.control.url)
    except BaseException:
        cluster.stop()
        raise
    nodes.append(api)
    state = TestbedState(
        api=f"http://{api.host}:{api.port}", control=cluster.control.url, nodes=nodes
    )
    state_path(directory).write_text(state.model_dump_json(indent=2))
    return state


def _terminate(node: TestbedNode, timeout: float = 5.0) -> None:
    if not process_alive(node):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(node) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)


def down(directory: Path) -> list[str]:
    """Stop every process the testbed in `directory` started; returns their names."""
    state = load_state(directory)
    stopped = []
    # API and controllers first, so nothing reacts to the Redis nodes going away.
    order = sorted(state.nodes, key=lambda n: n.role in {"control", "primary", "replica"})
    for node in order:
        if process_alive(node):
            _terminate(node)
            stopped.append(node.name)
    state_path(directory).rename(directory / f"{STATE_FILE}.stopped")
    return stopped


def status(directory: Path) -> tuple[TestbedState, dict[str, bool], dict | None]:
    """The state file, which processes are alive, and the API's /healthz answer (or None)."""
    state = load_state(directory)
    alive = {node.name: process_alive(node) for node in state.nodes}
    try:
        health = httpx.get(f"{state.api}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        health = None
    return state, alive, health


@contextlib.contextmanager
def running_testbed(
    directory: Path, *, shards: int = 3, replicas: int = 2
) -> Iterator[TestbedState]:
    """A testbed for the duration of a `with` block, stopped on the way out, also on error."""
    state = up(directory, shards=shards, replicas=replicas)
    try:
        yield state
    finally:
        down(directory)
