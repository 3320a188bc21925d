"""The local testbed: a whole deployment on loopback (control store, shards, ratequeue API, a
heartbeat sensor beside every replica, three Lazarus-lite controller nodes), started in the
background and described by `DIR/testbed.json` so other commands can find it. With
`control="etcd"` the coordination store (topology included) is a three-member etcd cluster
started beside the Redis that keeps carrying the event stream and the record log.

`up` returns with everything running, and (asked to) a supervisor beside it that starts a killed
API, controller or sensor again (`chaos.supervisor`); `down` stops the supervisor first, then
exactly the processes `up` started (checked by command line, so a recycled pid is never killed).
Not for: faults (see the fault backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypedDict, Unpack

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chaos.errors import FaultError, TestbedError
from chaos.processes import read_cmdline, read_comm, runs_program
from common import input_files
from common.etcd_processes import EtcdCluster, start_etcd_cluster
from common.http_processes import wait_until_healthy
from common.nodes import CLIENT_HOST, PEER_HOST, PROGRAMS_OF_ROLE, REDIS_ROLES, Role
from common.redis_processes import free_port
from common.sentinel_processes import SentinelTimers, start_sentinels
from common.validation import HttpUrlText, RedisUrlText, validated
from lazarus_lite.actuators import PROVISIONED_FILE
from lazarus_lite.coordination.opening import StoreAddress, opened_coordination_store
from ratequeue.local_cluster import LocalCluster
from ratequeue.membership import write_quorum
from ratequeue.topology import TOPOLOGY_KEY, Topology

STATE_FILE = "testbed.json"
# What keeps the coordination store: the control Redis, or a three-member etcd cluster.
ControlBackend = Literal["redis", "etcd"]
# What fails a shard over: the Lazarus-lite controllers, or three Redis Sentinels.
FailoverManager = Literal["lazarus", "sentinel"]
# When an enqueue is acknowledged: once a replica holds it (`WAIT`, and a primary refuses writes
# without a replica), or at once (Sentinel's usual asynchronous replication).
AckMode = Literal["wait", "async"]

log = logging.getLogger(__name__)


class TestbedNode(BaseModel):
    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role
    shard: str | None = None
    host: str
    port: int = Field(gt=0, lt=65536)
    pid: int
    program: str | None = None  # what its command line runs, when its role does not say
    # The argv it was started with (Redis nodes), so a fault can boot it again as it was.
    command: list[str] | None = None
    # The argv the supervisor starts it again with (API, controllers, sensors). Not `command`:
    # a fault that stops such a node leaves it to the supervisor rather than racing it.
    restart_command: list[str] | None = None

    @model_validator(mode="after")
    def _program_known(self) -> TestbedNode:
        if self.program is None and self.role not in PROGRAMS_OF_ROLE:
            raise ValueError(f"{self.name}: a node of role {self.role!r} must name its program")
        return self


class Restart(BaseModel):
    """One restart the supervisor made (or gave up on: `pid` None)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    at: float
    old_pid: int
    pid: int | None = None
    note: str = ""


class SupervisorRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pid: int
    restarts: list[Restart] = Field(default_factory=list, description="the latest, oldest first")


# How many restarts `testbed.json` remembers: the supervisor's log has them all.
RESTARTS_REMEMBERED = 50


class TestbedState(BaseModel):
    __test__ = False
    model_config = ConfigDict(extra="forbid")

    api: HttpUrlText
    control: RedisUrlText
    etcd_endpoints: str | None = None  # the coordination store's members, when it is etcd
    nodes: list[TestbedNode]
    lazarus: list[HttpUrlText] = []
    lazarus_token: str | None = None
    supervisor: SupervisorRecord | None = None
    failover: FailoverManager = "lazarus"
    ack: AckMode = "wait"
    sentinels: list[str] = Field(default_factory=list, description="host:port of each sentinel")

    def node(self, name: str) -> TestbedNode:
        return next(n for n in self.nodes if n.name == name)

    def store_address(self) -> StoreAddress:
        """Where the testbed's coordination store is."""
        return StoreAddress.of(self.control, self.etcd_endpoints)


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> TestbedState:
    path = state_path(directory)
    if not path.exists():
        raise TestbedError(f"no testbed in {directory} ({STATE_FILE} not found)")
    return read_state(path, error=TestbedError)


def read_state(path: Path, *, error: Callable[[str], Exception]) -> TestbedState:
    """A `testbed.json` someone pointed a command at; a bad one raises `error` naming the file
    and the field (it may have been edited, truncated, or be another file of that name)."""
    raw = input_files.load(path, expected="a testbed state (api, control, nodes)", as_json=True,
                           error=error)  # fmt: skip
    return validated(TestbedState, raw, str(path), error=error)


# Rollbacks run on timer threads, and other processes (a second run, `down`) may write too: one
# writer at a time, in this process (the lock) and across processes (flock on a lock file).
_STATE_WRITE = threading.Lock()


def record_pid(directory: Path, name: str, pid: int) -> bool:
    """Note in `testbed.json` that node `name` now runs as `pid` (a fault restarted it), so
    `status`, `down` and a later fault find it; False if the file is gone (the testbed was
    taken down) or lists no such node."""

    def change(state: TestbedState) -> bool:
        node = next((n for n in state.nodes if n.name == name), None)
        if node is None:
            return False
        node.pid = pid
        return True

    return update_state(directory, change)


def record_restart(directory: Path, restart: Restart) -> bool:
    """Note a supervisor's restart: the node's new pid (as `record_pid`) and the restart among
    the last `RESTARTS_REMEMBERED`; False if the testbed was taken down meanwhile."""

    def change(state: TestbedState) -> bool:
        node = next((n for n in state.nodes if n.name == restart.name), None)
        if node is None or state.supervisor is None:
            return False
        if restart.pid is not None:
            node.pid = restart.pid
        state.supervisor.restarts = [*state.supervisor.restarts, restart][-RESTARTS_REMEMBERED:]
        return True

    return update_state(directory, change)


def update_state(directory: Path, change: Callable[[TestbedState], bool]) -> bool:
    """Apply `change` to `testbed.json` as its one writer of the moment, and store the result if
    it returns True; False if the file is gone (the testbed was taken down) or nothing changed."""
    path = state_path(directory)
    with _STATE_WRITE, (directory / ".testbed.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            return False
        state = load_state(directory)
        if not change(state):
            return False
        # Replaced whole, so a reader never sees half a file.
        handle, fresh = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(state.model_dump_json(indent=2))
            os.replace(fresh, path)
        except BaseException:
            Path(fresh).unlink(missing_ok=True)
            raise
    return True


def _expected_programs(node: TestbedNode) -> tuple[str, ...]:
    if node.program:
        return (node.program,)
    return PROGRAMS_OF_ROLE[node.role]


def process_alive(node: TestbedNode) -> bool:
    """True if the node's pid still runs the program the testbed started there (the program,
    not a word among its arguments: see `chaos.processes.program_names`)."""
    argv = read_cmdline(node.pid)  # None once it is gone or a zombie
    return argv is not None and runs_program(argv, read_comm(node.pid), _expected_programs(node))


def _spawn(directory: Path, name: str, args: list[str]) -> subprocess.Popen:
    return spawn_command(directory, name, [sys.executable, "-m", *args])


def spawn_command(directory: Path, name: str, argv: list[str]) -> subprocess.Popen:
    """Start `argv` in a session of its own (it outlives the caller), logging to
    `logs/NAME.log`; `Popen.args` is the argv, recorded so it can be started again."""
    log = directory / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(node: TestbedNode, process: subprocess.Popen, directory: Path) -> None:
    outcome = wait_until_healthy(process, f"http://{node.host}:{node.port}/healthz")
    if outcome == "exited":
        raise TestbedError(f"{node.name} exited at start; see {directory}/logs/{node.name}.log")
    if outcome == "timed_out":
        _terminate(node)
        raise TestbedError(f"{node.name} not healthy within 20 s; see {directory}/logs")


def _served_at(control_url: str, port: int) -> list[str]:
    """The args every testbed service takes: its control store, and where it listens."""
    return ["--control", control_url, "--host", CLIENT_HOST, "--port", str(port)]


def start_api(
    directory: Path, control_url: str, extra_args: list[str] | None = None
) -> TestbedNode:
    port = free_port((CLIENT_HOST,))
    process = _spawn(
        directory,
        "api",
        [
            "ratequeue",
            "serve",
            *_served_at(control_url, port),
            *(extra_args or []),
        ],
    )
    node = TestbedNode(name="api", role="api", host=CLIENT_HOST, port=port, pid=process.pid,
                       restart_command=list(process.args))  # fmt: skip
    _wait_healthy(node, process, directory)
    return node


def register_in_balancer(address: StoreAddress, service: str, node: TestbedNode) -> None:
    """List a stateless host in the service's balancer (the stateless profile replaces it)."""

    async def register() -> None:
        async with opened_coordination_store(address) as store:
            await store.services.add(service, f"http://{node.host}:{node.port}", name=node.name)

    asyncio.run(register())


def start_controllers(
    directory: Path,
    control_url: str,
    count: int,
    extra_args: list[str] | None = None,
    token: str = "",
) -> list[TestbedNode]:
    """`count` Lazarus-lite nodes, each knowing the others as its quorum peers."""
    ports = []
    while len(ports) < count:
        port = free_port((CLIENT_HOST,))
        if port not in ports:
            ports.append(port)
    urls = [f"http://{CLIENT_HOST}:{p}" for p in ports]
    started: list[tuple[TestbedNode, subprocess.Popen]] = []
    try:
        for index, port in enumerate(ports):
            name = f"lazarus{index + 1}"
            peers = [arg for url in urls if url != urls[index] for arg in ("--peer", url)]
            process = _spawn(
                directory,
                name,
                [
                    "lazarus_lite",
                    "serve",
                    "--node-id",
                    name,
                    *_served_at(control_url, port),
                    "--quorum",
                    str(min(2, count)),
                    "--actuator-dir",
                    str(directory / "redis"),
                    "--log-level",
                    "info",
                    "--api-token",
                    token,
                    # Returning former primaries rejoin once their data files are copied here.
                    "--forensics-dir",
                    str(directory / "forensics"),
                    *peers,
                    *(extra_args or []),
                ],
            )
            node = TestbedNode(name=name, role="lazarus", host=CLIENT_HOST, port=port,
                               pid=process.pid, restart_command=list(process.args))  # fmt: skip
            started.append((node, process))
        for node, process in started:
            _wait_healthy(node, process, directory)
    except BaseException:
        for node, _ in started:
            _terminate(node)
        raise
    return [node for node, _ in started]


def start_sensor(
    directory: Path,
    control_url: str,
    replica: TestbedNode,
    source_host: str,
    extra_args: list[str] | None = None,
) -> TestbedNode:
    """A sensor beside `replica`; its PINGs leave from `source_host` (its own loopback address,
    so an experiment can cut one sensor's path to the primary and leave the others')."""
    name = f"sensor-{replica.name}"
    process = _spawn(
        directory,
        name,
        [
            "detection",
            "sensor",
            "--control",
            control_url,
            "--replica",
            f"{PEER_HOST}:{replica.port}",
            "--name",
            name,
            "--source-host",
            source_host,
            *(extra_args or []),
        ],
    )
    return TestbedNode(
        name=name,
        role="sensor",
        shard=replica.shard,
        host=source_host,
        port=replica.port,
        pid=process.pid,
        restart_command=list(process.args),
    )


def provisioned_nodes(directory: Path) -> list[TestbedNode]:
    """Processes the controllers' local actuator started (replacement replicas, their sensors)."""
    path = directory / "redis" / PROVISIONED_FILE
    if not path.exists():
        return []
    nodes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            nodes.append(TestbedNode.model_validate_json(line))
        except ValueError as error:  # a line cut short by a crash, or of another version
            log.warning("%s line %d is not a node; skipped: %s", path, number, error)
    return nodes


class UpOptions(TypedDict, total=False):
    """`up`'s options, for what starts a testbed through it (`running_testbed`)."""

    shards: int
    replicas: int
    controllers: int
    sensors: bool
    controller_args: list[str] | None
    sensor_args: list[str] | None
    supervise: bool
    control: ControlBackend
    failover: FailoverManager
    ack: AckMode
    sentinel_timers: SentinelTimers | None
    api_workers: int
    shard_maxmemory: str | None


# Each shard node's memory limit in the testbed (`--shard-maxmemory`): far above what an
# experiment queues, low enough that a runaway load fills a shard, not the machine.
TESTBED_SHARD_MAXMEMORY = "1gb"


def up(
    directory: Path,
    *,
    shards: int = 3,
    replicas: int = 2,
    controllers: int = 3,
    sensors: bool = True,
    controller_args: list[str] | None = None,
    sensor_args: list[str] | None = None,
    supervise: bool = False,
    control: ControlBackend = "redis",
    failover: FailoverManager = "lazarus",
    ack: AckMode = "wait",
    sentinel_timers: SentinelTimers | None = None,
    api_workers: int = 1,
    shard_maxmemory: str | None = TESTBED_SHARD_MAXMEMORY,
) -> TestbedState:
    """Start a testbed in `directory` and leave it running. With `controllers=0` and
    `sensors=False` it is the queue alone (no automated failover); with `supervise`, a
    supervisor starts a killed API, controller or sensor again (`chaos.supervisor`); with
    `control="etcd"`, the coordination store is a three-member etcd cluster; `api_workers` is
    the API's worker processes (1 by default: two cores are shared by every process of the
    testbed, and one API process is what the experiments' kill and restart faults target);
    `shard_maxmemory` caps each shard node's memory (a full shard refuses writes, never evicts).
    With `failover="sentinel"` three Redis Sentinels (`sentinel_timers`) manage the shards
    instead of controllers and sensors (none is started), and the API routes by what they
    decide; `ack="async"` acknowledges enqueues without waiting for a replica."""
    if failover == "sentinel" and control != "redis":
        raise TestbedError("failover sentinel keeps the map in the control Redis: control redis")
    if ack == "async" and failover != "sentinel":
        # The controllers appoint every primary with the write quorum: they would restore it.
        raise TestbedError("ack async is Sentinel's acknowledgement: it needs failover sentinel")
    min_replicas = 1 if ack == "wait" else 0
    directory.mkdir(parents=True, exist_ok=True)
    if state_path(directory).exists():
        existing = load_state(directory)
        if any(process_alive(n) for n in existing.nodes):
            raise TestbedError(f"a testbed is already running in {directory}; run down first")
    # Whatever fails or interrupts the start (an error, Ctrl-C, SIGTERM through the CLI), no
    # process of it outlives `up`: `down` cannot stop a testbed whose testbed.json was never
    # written, and a start cut short may have spawned processes not yet recorded anywhere.
    with _swept_on_failure(directory):
        # A new testbed starts empty: data a stopped one left (AOF files, a kill switch, queued
        # messages) must not leak into the next experiment.
        shutil.rmtree(directory / "redis", ignore_errors=True)
        cluster = LocalCluster.start(
            directory / "redis",
            shards=shards,
            replicas=replicas,
            min_replicas=min_replicas,
            detached=True,
            maxmemory=shard_maxmemory,
            node_args=sentinel_managed_args(min_replicas) if failover == "sentinel" else (),
        )
        nodes = [
            TestbedNode(name=n.name, role=n.role, shard=n.shard, host=n.host, port=n.port,
                        pid=n.pid, command=list(n.argv) or None)
            for n in cluster.nodes()
        ]  # fmt: skip
        started: list[TestbedNode] = []
        token = secrets.token_urlsafe(24)
        etcd: EtcdCluster | None = None
        address = StoreAddress(control_url=cluster.control.url)
        if shard_maxmemory is not None:  # the replacements the controllers start get it too
            controller_args = [*(controller_args or []), "--replica-maxmemory", shard_maxmemory]
        api_args: list[str] = ["--workers", str(api_workers), "--min-replicas", str(min_replicas)]
        sentinels: list[TestbedNode] = []
        try:
            if failover == "sentinel":
                sentinels = start_testbed_sentinels(directory, cluster, sentinel_timers)
                started += sentinels
                addresses = ",".join(f"{n.host}:{n.port}" for n in sentinels)
                api_args += ["--topology-backend", "sentinel", "--sentinels", addresses]
                controllers, sensors = 0, False
            if control == "etcd":
                etcd = start_etcd_cluster(directory / "etcd", detached=True)
                started += [
                    TestbedNode(name=m.name, role="etcd", host=CLIENT_HOST, port=m.client_port,
                                pid=m.pid, command=list(m.argv))
                    for m in etcd.members
                ]  # fmt: skip
                address = move_topology_to_etcd(cluster, ",".join(etcd.endpoints))
                endpoints = ["--etcd-endpoints", address.etcd_endpoints or ""]
                api_args += ["--topology-backend", "etcd", *endpoints]
                controller_args = [
                    "--coordination-backend",
                    "etcd",
                    *endpoints,
                    *(controller_args or []),
                ]
                sensor_args = [*endpoints, *(sensor_args or [])]
            api = start_api(directory, cluster.control.url, api_args)
            started.append(api)
            register_in_balancer(address, "ratequeue-api", api)
            lazarus = start_controllers(
                directory, cluster.control.url, controllers, controller_args, token
            )
            started += lazarus
            if sensors:
                replicas_started = [n for n in nodes if n.role == "replica"]
                started += [
                    start_sensor(
                        directory, cluster.control.url, n, f"127.0.1.{index + 1}", sensor_args
                    )
                    for index, n in enumerate(replicas_started)
                ]
            nodes += started
            state = TestbedState(
                api=f"http://{api.host}:{api.port}",
                control=cluster.control.url,
                etcd_endpoints=address.etcd_endpoints,
                nodes=nodes,
                lazarus=[f"http://{n.host}:{n.port}" for n in lazarus],
                lazarus_token=token if lazarus else None,
                failover=failover,
                ack=ack,
                sentinels=[f"{n.host}:{n.port}" for n in sentinels],
            )
            if supervise:
                where = str(directory.resolve())
                argv = [sys.executable, "-m", "chaos", "testbed", "supervise", "--dir", where]
                process = spawn_command(directory, "supervisor", argv)
                state.supervisor = SupervisorRecord(pid=process.pid)
            state_path(directory).write_text(state.model_dump_json(indent=2))
        except BaseException:
            for node in started:
                _terminate(node)
            if etcd is not None:
                etcd.stop()
            cluster.stop()
            raise
        return state


@contextlib.contextmanager
def _swept_on_failure(directory: Path) -> Iterator[None]:
    """Stop every process working in `directory` (`sweep`) if the block raises anything,
    KeyboardInterrupt included, and raise it on."""
    try:
        yield
    except BaseException:
        sweep(directory)
        raise


def sentinel_managed_args(min_replicas: int) -> tuple[str, ...]:
    """The flags of a shard node Sentinel manages: it announces its peer address to the
    primary (so Sentinel and the replicas it reconfigures use the peer path, the one partition
    experiments cut), and it carries the write quorum already, since Sentinel promotes a replica
    as it is (it lifts no boot-time guard)."""
    quorum = [arg for name, value in write_quorum(min_replicas).items()
              for arg in (f"--{name}", str(value))]  # fmt: skip
    return ("--replica-announce-ip", PEER_HOST, *quorum)


def start_testbed_sentinels(
    directory: Path, cluster: LocalCluster, timers: SentinelTimers | None
) -> list[TestbedNode]:
    """Three sentinels monitoring each shard (master name: the shard id) at its primary's peer
    address, as the controllers would reach it."""
    masters = {s.id: (s.primary.peer_host, s.primary.port) for s in cluster.shards}
    started = start_sentinels(directory / "sentinel", masters, timers, detached=True)
    return [
        TestbedNode(name=s.name, role="sentinel", host=s.host, port=s.port, pid=s.pid,
                    command=list(s.argv))
        for s in started
    ]  # fmt: skip


def move_topology_to_etcd(cluster: LocalCluster, endpoints: str) -> StoreAddress:
    """Publish the cluster's first topology in etcd and take it out of the control Redis (so
    nothing can route by a map that no longer changes); the store's address on etcd."""
    address = StoreAddress.of(cluster.control.url, endpoints)
    with cluster.control.client() as control:
        topology = Topology.model_validate_json(control.get(TOPOLOGY_KEY))

    async def publish() -> None:
        async with opened_coordination_store(address) as store:
            await store.topology.compare_and_set(0, topology)

    asyncio.run(publish())
    with cluster.control.client() as control:
        control.delete(TOPOLOGY_KEY)
    return address


def supervisor_alive(directory: Path, record: SupervisorRecord) -> bool:
    """True if `record.pid` still runs this testbed's supervisor (by command line)."""
    argv = read_cmdline(record.pid)
    return argv is not None and "supervise" in argv and str(directory.resolve()) in argv


def _terminate(node: TestbedNode, timeout: float = 5.0) -> None:
    _terminate_together([node], timeout)


def _terminate_together(nodes: list[TestbedNode], timeout: float = 5.0) -> list[str]:
    """Stop `nodes` at once (each shuts down in its own time, not after the ones before it);
    returns the names of those that were running."""
    running = [n for n in nodes if process_alive(n)]
    _stop_pids([(n.pid, lambda n=n: process_alive(n)) for n in running], timeout)
    return [n.name for n in running]


def _stop_pid(pid: int, alive: Callable[[], bool], timeout: float = 5.0) -> None:
    _stop_pids([(pid, alive)], timeout)


def _stop_pids(processes: list[tuple[int, Callable[[], bool]]], timeout: float = 5.0) -> None:
    """SIGTERM each pid, then SIGKILL those still running after `timeout`; each one's callable
    says whether its pid still runs the process meant (a pid can be reused)."""
    for pid, _ in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive() for _, alive in processes) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid, alive in processes:
        if alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def down(directory: Path, say: Callable[[str], None] = lambda _: None) -> list[str]:
    """Stop every process the testbed in `directory` started; returns their names. First the
    blackholes a chaos run that died left on them are undone (`say` names each), so no rule or
    cgroup of theirs outlives them to catch whatever takes their ports next."""
    state = load_state(directory)
    from chaos.faults.local.backend import LocalFaultBackend

    with contextlib.suppress(FaultError):
        pids = [n.pid for n in state.nodes if n.pid is not None and process_alive(n)]
        for undone in LocalFaultBackend().remove_leftovers(pids):
            say(undone)
    stopped = []
    # The supervisor first, so it does not start again what is being stopped.
    supervisor = state.supervisor
    if supervisor is not None and supervisor_alive(directory, supervisor):
        _stop_pid(supervisor.pid, lambda: supervisor_alive(directory, supervisor))
        stopped.append("supervisor")
    # Controllers first (one may be provisioning a replica right now), then read what their
    # actuator started; then API and sensors, so nothing reacts to the Redis nodes going away.
    # Within each of those steps, all at once: a testbed has a dozen processes to stop.
    stopped += _terminate_together([n for n in state.nodes if n.role == "lazarus"])
    rest = [n for n in state.nodes if n.role != "lazarus"] + provisioned_nodes(directory)
    stopped += _terminate_together([n for n in rest if n.role not in REDIS_ROLES])
    stopped += _terminate_together([n for n in rest if n.role in REDIS_ROLES])
    stopped += sweep(directory)
    state_path(directory).rename(directory / f"{STATE_FILE}.stopped")
    return stopped


def sweep(directory: Path) -> list[str]:
    """Stop any process still working in `directory` (its working directory or an open file is
    there): what an interrupted start or a provisioning cut short left behind. The caller and
    its parents are never touched."""
    found = []
    for pid in processes_working_in(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        found.append(f"pid {pid}")
    return found


def processes_working_in(directory: Path) -> list[int]:
    """The pids of the processes whose working directory or an open file is in `directory`,
    but for the caller and its parent."""
    root = str(directory.resolve())
    spared = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            places = [os.readlink(entry / "cwd")]
            places += [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(place == root or place.startswith(root + "/") for place in places):
            found.append(int(entry.name))
    return found


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
def running_testbed(directory: Path, **options: Unpack[UpOptions]) -> Iterator[TestbedState]:
    """A testbed for the duration of a `with` block (started by `up` with `options`), stopped
    on the way out, also on error."""
    state = up(directory, **options)
    try:
        yield state
    finally:
        down(directory)
