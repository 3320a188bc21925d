"""Failover recovery time, run by hand: SIGKILL a shard primary, time until the first write is
acknowledged again, and compare with Redis Sentinel on the same machine in the same run.

(1) ratequeue + Lazarus-lite, on the local testbed (`running_testbed`: 3 shards of a primary and
    2 replicas, a heartbeat sensor beside every replica, 3 controller nodes, the HTTP API). The
    shards are killed in turn; before each kill the shard must be healthy again (status ok, 2
    replicas listed in the topology and streaming from the primary, their sensors watching it,
    the API on the current epoch) and a prober must see the API acknowledge writes to it. The
    prober starts a `POST /v1/numbers/{n}/messages` (a short code routed to that shard) every
    `--interval-ms` (20), from `--workers` (3) tasks taking turns, open loop: a request the API
    holds in its internal retries during the outage does not delay the next. Only requests
    started after the kill count. (Much more probing load on a small machine slows the recovery
    it measures: the API's retries pile up during the outage.) Each kill is split into phases
    from the audit trail and the workflow's step records:
      detect       kill → `occurred_at` of the incident's first RedisMasterDown event
      decide       → `decided_at` of the event whose workflow ran (rule, quorum of checks)
      promote      → `promote_candidate` finished (fence, choose the candidate, REPLICAOF NO ONE)
      publish      → `publish_topology` finished (repoint the other replica, epoch + 1)
      first write  → the first HTTP 201 (the API follows the topology, WAIT confirms a replica)
    Each kill also keeps its stage trace (`trace` in the JSON, milliseconds after the kill:
    the sensors' reports seen and received, the decision's stages from the audit record's
    `stages`, every workflow step's start and end, the first 201) and how long each node's
    checks took in the quorum round (`quorum_seconds`): where the idle waits show.
    Targets for the total, per fault (issue 12, `targets_for`): a kill p50 <= 150 ms, p95
    <= 300 ms (p95 <= 1 s with `--busy`) and p50 at most 0.1 of Sentinel's; a stall or a cut
    peer path p50 <= 1.5 s, p95 <= 2.5 s. The controllers' per-service rate limit
    (10 incidents in 10 minutes by default, which these kills are) is raised above `--kills`.
(2) Redis Sentinel: 1 primary + 2 replicas and 3 sentinels (quorum 2, down-after 1000 ms),
    SIGKILL of the current primary, time until `SET` + `WAIT 1 100` through redis-py's
    `Sentinel.master_for` succeeds (retried every 20 ms); the killed node is restarted as a
    replica between kills. Phases from the sentinels' own pub/sub events (+sdown, +odown,
    +promoted-slave).

(1) runs once per coordination store, in the same run (`--control both`, the default): the
embedded Redis control store, then a three-member etcd cluster (`chaos testbed up --control
etcd`: topology, locks, workflow records, claims and the sensors' registry in etcd; the event
stream and audit in Redis). The target for etcd: its total p50 at most 100 ms over Redis'.

Prints tables, the ratios of the p50s (each backend to Sentinel, etcd to Redis), and writes
benchmarks/results/failover-<timestamp>.json (and a Markdown rendering next to it). Run from the
repository root: `python -m benchmarks.failover_recovery [--kills 10] [--quick] [--control X]`.

Not for: CI (timings depend on the machine and its load), or zero-loss checking (the
end-to-end tests and chaos experiments do that).
`--fault pause` sends SIGSTOP instead of SIGKILL (to both managers' primaries): a process that
is stopped answers nothing, so only silence is evidence and the sensors' thresholds decide; the
stopped process is killed once its failover is measured, and the run goes on as after a kill.
`--fault partition` blackholes the primary's peer path instead (iptables DROP rules on its peer
address and port, as the local fault backend's `blackhole` does; root only): replicas, sensors
and controllers get silence from a live process while clients still reach it on its client
address. Sentinel watches a node where its clients reach it, so there both addresses are cut.
Once measured the process is killed and the rules removed (`benchmarks.primary_faults`).
Clocks: every timestamp is `time.time()` on this one machine, so the phases are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
import redis.asyncio as aioredis
import typer
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel
from rich.console import Console
from rich.table import Table

from benchmarks.cpu_hogs import cpu_hogs, every_core
from benchmarks.primary_faults import (
    Fault,
    PrimaryFault,
    network_faults,
)
from chaos.faults.base import NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.testbed import (
    ControlBackend,
    TestbedNode,
    TestbedState,
    down,
    process_alive,
    provisioned_nodes,
    running_testbed,
    state_path,
)
from common.errors import RedisStartError
from common.nodes import CLIENT_HOST, REDIS_ROLES
from common.redis_processes import RedisProcess
from common.sentinel_processes import SentinelProcess, SentinelTimers, start_sentinel
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import opened_coordination_store
from ratequeue.local_cluster import LocalCluster
from ratequeue.slots import slot_for
from ratequeue.topology import Shard, Topology

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# What etcd may cost over the Redis control store at p50 (kill → first acknowledged write).
TARGET_ETCD_OVER_REDIS_P50 = 0.1
BACKENDS = ("redis", "etcd")
REPLICAS = 2
PROBE_INTERVAL = 0.02
MAX_IN_FLIGHT = 400
SERVICE = "ratequeue"
MASTER_NAME = "bench"


PHASES = ("detect", "decide", "promote", "publish", "first_write")
SENTINEL_PHASES = ("detect", "agree", "promote", "first_write")
PHASE_LABELS = {
    "detect": "detect",
    "decide": "decide",
    "agree": "agree (+odown)",
    "promote": "promote",
    "publish": "publish",
    "first_write": "first write",
    "total": "total",
}

console = Console(width=shutil.get_terminal_size((150, 40)).columns)
T = TypeVar("T")


class BenchmarkError(RuntimeError):
    """One kill could not be measured (the message says which condition was not reached)."""


# -- figures -----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
    }


@dataclass
class KillResult:
    """One SIGKILL of a ratequeue shard primary. Marks are Unix times; phases are seconds."""

    index: int
    shard: str
    killed: str
    killed_pid: int
    shard_epoch: int
    killed_at: float
    promoted: str | None = None
    marks: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    total: float | None = None
    down_events: int = 0
    workflow_id: str | None = None
    workflow_status: str | None = None
    # final answers to the requests started between the kill and the first acknowledgement
    probe_statuses: dict[str, int] = field(default_factory=dict)
    probe_skipped: int = 0  # prober ticks skipped: too many requests outstanding
    # (started after the kill, seconds to answer, status) of those not acknowledged
    probe_refusals: list[tuple[float, float, str]] = field(default_factory=list)
    first_ack_request_started: float | None = None  # seconds after the kill
    # stage → seconds after the kill, in the order they happened (see `kill_trace`)
    trace: dict[str, float] = field(default_factory=dict)
    # node → seconds its checks took in the quorum round (a peer's as it measured them)
    quorum_seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # A partition: how long its rules took to put in place (`killed_at` is when they were).
    fault_install_s: float | None = None


def kill_trace(
    killed_at: float, downs: list[dict], ran: dict, workflow: dict, first_ack: float
) -> dict[str, float]:
    """One failover stage by stage, seconds after the kill: the sensors' reports, the deciding
    controller's stages (the audit record's `stages`), each workflow step's start and end (with
    its attempts when retried), the first acknowledged write. Where the idle waits show."""
    marks: dict[str, float] = {}
    for number, report in enumerate(sorted(downs, key=lambda d: d["received_at"]), 1):
        data = report["event"].get("data") or {}
        evidence = f"{data.get('evidence')}, {data.get('consecutive_failures')} failed"
        seen = f"report {number} seen ({evidence})"
        marks[seen] = parse_time(report["event"]["occurred_at"])
        marks[f"report {number} received"] = float(report["received_at"])
    marks |= {f"decision: {stage}": at for stage, at in ran.get("stages", {}).items()}
    marks["decided"] = float(ran["decided_at"])
    for name, step_record in (workflow.get("steps") or {}).items():
        retried = f" (attempt {step_record['attempts']})" if step_record["attempts"] > 1 else ""
        if step_record.get("started_at") is not None:
            marks[f"step {name} started{retried}"] = float(step_record["started_at"])
        if step_record.get("finished_at") is not None:
            marks[f"step {name} finished"] = float(step_record["finished_at"])
    marks["first 201"] = first_ack
    ordered = sorted(marks.items(), key=lambda item: item[1])
    return {stage: round(at - killed_at, 4) for stage, at in ordered if at - killed_at < 10}


@dataclass
class SentinelKill:
    index: int
    killed: str
    killed_port: int
    killed_at: float
    promoted: str | None = None
    marks: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    total: float | None = None
    attempts: int = 0
    error: str | None = None


def phase_summary(kills: list[Any], names: tuple[str, ...]) -> dict[str, dict]:
    done = [k for k in kills if k.total is not None]
    summary = {
        name: summarize([k.phases[name] for k in done if name in k.phases]) for name in names
    }
    summary["total"] = summarize([k.total for k in done])
    return summary


# -- small helpers -----------------------------------------------------------------------------
async def wait_until(
    what: str, probe: Callable[[], Awaitable[T | None]], timeout: float, interval: float = 0.05
) -> T:
    """Await `probe()` until it returns something truthy; BenchmarkError after `timeout`. A probe
    that raises BenchmarkError counts as not yet, and its message says why in the timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            value = await probe()
        except BenchmarkError as error:
            value, last = None, str(error)
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:g} s waiting for {what}: {last}")
        await asyncio.sleep(interval)


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def redis_version() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), out.strip())


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = int(first.split()[1]) / 1024**2
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "redis_server": redis_version(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_py": redis.__version__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- (1) ratequeue + Lazarus-lite ----------------------------------------------------------------
class Prober:
    """Enqueues to one number, open loop: one request every `interval`, started in turn by
    `workers` tasks (each every `workers * interval`), whether or not earlier requests have
    answered, so a request the API holds in its internal retries during the outage does not
    delay the next one. At most `max_in_flight` are outstanding (a tick is skipped beyond that).
    Keeps (started, finished, status) of every request that finished."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        api: str,
        number: str,
        workers: int,
        interval: float,
        max_in_flight: int,
    ) -> None:
        self.url = f"{api}/v1/numbers/{number}/messages"
        self.http = http
        self.workers = workers
        self.interval = interval
        self.current: KillResult | None = None
        self.max_in_flight = max_in_flight
        self.records: list[tuple[float, float, str]] = []
        self.skipped = 0
        self._tickers: list[asyncio.Task] = []
        self._requests: set[asyncio.Task] = set()

    async def __aenter__(self) -> Prober:
        for index in range(self.workers):
            self._tickers.append(asyncio.create_task(self._tick(index * self.interval)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        pending = [*self._tickers, *self._requests]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        """Stop starting requests; give the outstanding ones `timeout` seconds to answer."""
        for task in self._tickers:
            task.cancel()
        await asyncio.gather(*self._tickers, return_exceptions=True)
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=timeout)

    async def _tick(self, offset: float) -> None:
        period = self.interval * self.workers
        next_at = time.monotonic() + offset
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            if len(self._requests) >= self.max_in_flight:
                self.skipped += 1
                continue
            task = asyncio.create_task(self._request())
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _request(self) -> None:
        started = time.time()
        try:
            response = await self.http.post(self.url, json={"body": "failover probe"})
            status = str(response.status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        self.records.append((started, time.time(), status))

    def first_ack(self, started_after: float) -> float | None:
        found = self.first_ack_request(started_after)
        return found[1] if found else None

    def first_ack_request(self, started_after: float) -> tuple[float, float] | None:
        """(started, finished) of the first request started then that was acknowledged."""
        acked = [(f, s) for s, f, status in self.records if s >= started_after and status == "201"]
        return (min(acked)[1], min(acked)[0]) if acked else None

    def statuses(self, started_after: float, started_before: float) -> dict[str, int]:
        return dict(
            Counter(status for s, _, status in self.records if started_after <= s < started_before)
        )


class RatequeueBench:
    def __init__(
        self,
        state: TestbedState,
        directory: Path,
        http: httpx.AsyncClient,
        store: CoordinationStore,
        workers: int,
        interval: float,
        fault: Fault = Fault.kill,
        network: LocalFaultBackend | None = None,
    ) -> None:
        self.fault = fault
        self.network = network  # what a partition cuts paths with
        self.state = state
        self.directory = directory
        self.http = http
        self.store = store
        self.workers = workers
        self.interval = interval
        self.current: KillResult | None = None

    async def topology(self) -> Topology:
        topology = await self.store.topology.load()
        if topology is None:
            raise BenchmarkError("no topology in the control store")
        return topology

    def redis_node(self, name: str) -> TestbedNode | None:
        """The testbed's or the actuator's record of a redis-server (latest record wins)."""
        found = None
        for node in [*self.state.nodes, *provisioned_nodes(self.directory)]:
            if node.name == name and node.role in REDIS_ROLES:
                found = node
        return found

    async def probe_number(self, shard_id: str) -> str:
        """A short code (100 msg/s, so its queue never fills here) routed to `shard_id`."""
        topology = await self.topology()
        for code in range(20000, 99999):
            if topology.shard_for_slot(slot_for(str(code))).id == shard_id:
                return str(code)
        raise BenchmarkError(f"no short code routes to {shard_id}")

    async def shard_ready(self, shard_id: str) -> tuple[Topology, Shard, TestbedNode]:
        """The shard as it must be before a kill; raises BenchmarkError saying what is missing."""
        topology = await self.topology()
        shard = topology.shard(shard_id)
        if shard.status != "ok":
            raise BenchmarkError(f"{shard_id} status is {shard.status}")
        if len(shard.replicas) != REPLICAS:
            raise BenchmarkError(f"{shard_id} lists {len(shard.replicas)} replicas")
        api = (await self.http.get(f"{self.state.api}/v1/topology")).json()
        if api.get("epoch") != topology.epoch:
            raise BenchmarkError(f"API at epoch {api.get('epoch')}, store at {topology.epoch}")
        for replica in shard.replicas:
            link = aioredis.Redis(
                host=replica.host, port=replica.port, socket_timeout=1, socket_connect_timeout=1
            )
            try:
                info = await link.info("replication")
            except (redis.RedisError, OSError) as error:
                raise BenchmarkError(f"replica {replica.name}: {error}") from None
            finally:
                await link.aclose()
            if info.get("master_link_status") != "up" or info.get("master_port") != (
                shard.primary.port
            ):
                raise BenchmarkError(f"replica {replica.name} not streaming from the primary")
            heartbeat = await self.store.sensors.heartbeat(f"sensor-{replica.name}")
            data = heartbeat.data if heartbeat is not None else {}
            if (data.get("primary"), data.get("shard_epoch"), data.get("ok")) != (
                shard.primary.name,
                shard.epoch,
                True,
            ):
                raise BenchmarkError(f"sensor-{replica.name} not yet watching the primary")
        node = self.redis_node(shard.primary.name)
        if node is None or node.port != shard.primary.port or not process_alive(node):
            raise BenchmarkError(f"no live process known for {shard.primary.name}")
        return topology, shard, node

    async def audit(self, path: str, **params: Any) -> Any:
        """GET from the first controller node that answers (they share the control store)."""
        last: Exception | None = None
        for url in self.state.lazarus:
            try:
                response = await self.http.get(f"{url}{path}", params=params)
                response.raise_for_status()
                return response.json()
            except httpx.HTTPError as error:
                last = error
        raise BenchmarkError(f"no controller answered {path}: {last}")

    async def incident(self, incident_key: str, since: float) -> tuple[list[dict], dict | None]:
        answer = await self.audit("/v1/events", service=SERVICE, since=since - 5, limit=1000)
        downs = [
            e
            for e in answer["events"]
            if e["event"]["type"] == "RedisMasterDown"
            and e["event"].get("incident_key") == incident_key
        ]
        ran = [e for e in downs if e.get("workflow_id")]
        return downs, (ran[0] if ran else None)

    async def kill_once(self, index: int, shard_id: str) -> KillResult:
        """Wait for the shard to be ready, put the fault on its primary, measure. On
        BenchmarkError after the fault, `self.current` holds what was measured so far; the
        fault is ended (`PrimaryFault.end`) on every path."""
        self.current = None
        number = await self.probe_number(shard_id)
        _, shard, node = await wait_until(
            f"{shard_id} to be healthy", lambda: self.shard_ready(shard_id), timeout=120
        )
        key = f"{SERVICE}/{shard_id}/RedisMasterDown/{shard.primary.name}@{shard.epoch}"
        primary = shard.primary
        target = NodeTarget(
            name=primary.name,
            role="primary",
            shard=shard_id,
            host=primary.host,
            port=primary.port,
            peer_host=primary.peer_host,
            pid=node.pid,
        )
        peer_host = primary.peer_host or primary.host
        fault = PrimaryFault(self.fault, node.pid, target, self.network, hosts=[peer_host])
        try:
            return await self._measure(index, shard, node, key, number, fault)
        finally:
            fault.end()  # also when the measurement failed: no cut path is left behind

    async def _measure(
        self, index: int, shard: Shard, node: TestbedNode, key: str, number: str,
        fault: PrimaryFault,
    ) -> KillResult:  # fmt: skip
        """`kill_once` from the prober's start (`fault` is ended by the caller too)."""
        shard_id = shard.id
        async with Prober(
            self.http, self.state.api, number, self.workers, self.interval, MAX_IN_FLIGHT
        ) as probe:
            warm = time.time()

            async def accepting() -> float | None:
                return probe.first_ack(warm)

            await wait_until(f"the API to acknowledge writes to {shard_id}", accepting, 15)
            killed_at = fault.inject()
            result = self.current = KillResult(
                index=index,
                shard=shard_id,
                killed=shard.primary.name,
                killed_pid=node.pid,
                shard_epoch=shard.epoch,
                killed_at=killed_at,
                fault_install_s=fault.install_seconds,
            )

            async def acknowledged() -> float | None:
                return probe.first_ack(killed_at)

            first_ack = await wait_until(
                "the first acknowledged write after the kill", acknowledged, 30, 0.01
            )
            # What clients that called during the outage got in the end (the API retries
            # internally for up to its retry deadline, then answers 503).
            await probe.drain(timeout=10)
            result.probe_statuses = probe.statuses(killed_at, first_ack)
            result.probe_skipped = probe.skipped
            result.probe_refusals = [
                (round(s - killed_at, 3), round(f - s, 3), status)
                for s, f, status in probe.records
                if killed_at <= s < first_ack and status != "201"
            ]
            first = probe.first_ack_request(killed_at)
            result.first_ack_request_started = first[0] - killed_at if first else None
        result.marks["killed"] = killed_at
        result.marks["first_write"] = first_ack
        result.total = first_ack - killed_at

        async def workflow_ran() -> dict | None:
            downs, ran = await self.incident(key, killed_at)
            return ran and {"downs": downs, "ran": ran}

        found = await wait_until(f"the audit of incident {key}", workflow_ran, 30, 0.2)
        downs, ran = found["downs"], found["ran"]
        result.down_events = len(downs)
        result.workflow_id = ran["workflow_id"]

        async def workflow_done() -> dict | None:
            detail = await self.audit(f"/v1/events/{ran['event_id']}")
            workflow = detail.get("workflow") or {}
            return workflow if workflow.get("status") not in (None, "running") else None

        workflow = await wait_until(
            f"workflow {result.workflow_id} to end", workflow_done, 120, 0.5
        )
        fault.end()  # a stalled or cut-off primary ends as a killed one would
        result.workflow_status = workflow["status"]
        steps = workflow["steps"]
        result.promoted = steps["promote_candidate"].get("output", {}).get("primary")
        result.marks["detect"] = min(parse_time(e["event"]["occurred_at"]) for e in downs)
        result.marks["decide"] = float(ran["decided_at"])
        for phase, step_name in (("promote", "promote_candidate"), ("publish", "publish_topology")):
            finished = steps[step_name].get("finished_at")
            if steps[step_name].get("status") != "succeeded" or finished is None:
                raise BenchmarkError(f"step {step_name} did not succeed: {steps[step_name]}")
            result.marks[phase] = float(finished)
        previous = killed_at
        for phase in PHASES:
            result.phases[phase] = result.marks[phase] - previous
            previous = result.marks[phase]
        result.trace = kill_trace(killed_at, downs, ran, workflow, first_ack)
        result.quorum_seconds = {v["node"]: v["seconds"] for v in ran.get("verdicts") or []}
        if result.workflow_status != "succeeded":
            result.error = f"workflow {result.workflow_id} {result.workflow_status}"
        return result


async def run_ratequeue(
    state: TestbedState,
    directory: Path,
    kills: int,
    workers: int,
    interval: float,
    fault: Fault = Fault.kill,
    network: LocalFaultBackend | None = None,
) -> list[KillResult]:
    results: list[KillResult] = []
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 8, max_keepalive_connections=64)
    async with (
        opened_coordination_store(state.store_address()) as store,
        httpx.AsyncClient(timeout=10, limits=limits) as http,
    ):
        bench = RatequeueBench(state, directory, http, store, workers, interval, fault, network)
        shard_ids = [s.id for s in (await bench.topology()).shards]
        failures = 0
        for index in range(kills):
            shard_id = shard_ids[index % len(shard_ids)]
            try:
                result = await bench.kill_once(index + 1, shard_id)
            except BenchmarkError as error:
                console.print(f"[red]kill {index + 1} ({shard_id}): {error}[/]")
                partial = bench.current or KillResult(
                    index + 1, shard_id, "(not killed)", 0, 0, time.time()
                )
                partial.error, partial.total = str(error), None
                results.append(partial)
                failures += 1
                if failures >= 2:
                    console.print("[red]two kills failed in a row: stopping[/]")
                    break
                continue
            failures = 0
            results.append(result)
            console.print(
                f"kill {result.index:2d}: {result.shard} {result.killed} → {result.promoted}: "
                f"{result.total * 1000:5.0f} ms ("
                + ", ".join(f"{p} {result.phases[p] * 1000:.0f}" for p in PHASES)
                + f") [{result.workflow_status}; {result.down_events} down events]"
            )
    return results


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C during the block is held back and raised after it (so a teardown completes)."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def finish_teardown(directory: Path) -> None:
    """`running_testbed` stops the testbed on the way out, but a Ctrl-C that lands while it is
    stopping cuts that short (the state file is renamed only at the end): finish the job."""
    if state_path(directory).exists():
        with interrupts_deferred():
            down(directory)


# -- (2) Redis Sentinel ------------------------------------------------------------------------
def start_bench_sentinel(workdir: Path, index: int, primary: RedisProcess) -> SentinelProcess:
    """One of the three sentinels (quorum 2, down-after 1000 ms) watching the bench's shard."""
    try:
        return start_sentinel(
            f"sentinel{index}",
            workdir,
            {MASTER_NAME: (primary.host, primary.port)},
            SentinelTimers(down_after_ms=1000, failover_timeout_ms=10_000),
        )
    except RedisStartError as error:
        raise BenchmarkError(str(error)) from None


class SentinelWatcher:
    """Records (time, sentinel port, channel, data) of every event the sentinels publish."""

    def __init__(self, sentinels: list[SentinelProcess]) -> None:
        self.sentinels = sentinels
        self.events: list[tuple[float, int, str, str]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> SentinelWatcher:
        for sentinel in self.sentinels:
            thread = threading.Thread(target=self._watch, args=(sentinel,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _watch(self, sentinel: SentinelProcess) -> None:
        while not self._stop.is_set():
            try:
                with sentinel.client() as conn, conn.pubsub() as pubsub:
                    pubsub.psubscribe("*")
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.1)
                        if message and message["type"] == "pmessage":
                            with self._lock:
                                self.events.append(
                                    (
                                        time.time(),
                                        sentinel.port,
                                        message["channel"].decode(),
                                        message["data"].decode(),
                                    )
                                )
            except (redis.RedisError, OSError):
                time.sleep(0.1)

    def first(self, channel: str, after: float, prefix: str = "") -> float | None:
        with self._lock:
            times = [
                t
                for t, _, c, d in self.events
                if c == channel and t >= after and d.startswith(prefix)
            ]
        return min(times) if times else None

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)


class SentinelBench:
    def __init__(
        self,
        cluster: LocalCluster,
        sentinels: list[SentinelProcess],
        fault: Fault = Fault.kill,
        network: LocalFaultBackend | None = None,
    ) -> None:
        self.fault = fault
        self.network = network
        self.cluster = cluster
        self.sentinels = sentinels
        shard = cluster.shards[0]
        self.nodes = [shard.primary, *shard.replicas]
        self.client = Sentinel(
            [(CLIENT_HOST, s.port) for s in sentinels],
            sentinel_kwargs={"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
        ).master_for(
            MASTER_NAME,
            socket_timeout=0.5,
            socket_connect_timeout=0.2,
            retry=Retry(NoBackoff(), 0),
        )
        self.watcher = SentinelWatcher(sentinels)

    def master(self) -> tuple[str, int]:
        with self.sentinels[0].client() as conn:
            host, port = conn.sentinel_get_master_addr_by_name(MASTER_NAME)
        return host.decode() if isinstance(host, bytes) else str(host), int(port)

    def node_at(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def healthy(self) -> str | None:
        """None when every sentinel agrees on the master and sees 2 replicas in sync and 2 other
        sentinels, and WAIT confirms both replicas; else what is missing."""
        addresses = set()
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as conn:
                    master = conn.sentinel_master(MASTER_NAME)
                    replicas = conn.sentinel_slaves(MASTER_NAME)
            except (redis.RedisError, OSError) as error:
                return f"sentinel {sentinel.port}: {error}"
            addresses.add((master["ip"], master["port"]))
            if not master.get("is_master") or master.get("is_sdown") or master.get("is_odown"):
                return f"sentinel {sentinel.port}: master flags {master.get('flags')}"
            if master.get("num-other-sentinels") != len(self.sentinels) - 1:
                return f"sentinel {sentinel.port}: {master.get('num-other-sentinels')} peers"
            good = [
                r
                for r in replicas
                if not (r.get("is_sdown") or r.get("is_odown") or r.get("is_disconnected"))
                and r.get("master-link-status") == "ok"
            ]
            if len(good) != REPLICAS:
                return f"sentinel {sentinel.port}: {len(good)} replicas in sync"
        if len(addresses) != 1:
            return f"sentinels disagree on the master: {sorted(addresses)}"
        try:
            self.client.set("bench:health", uuid.uuid4().hex)
            confirmed = int(self.client.wait(REPLICAS, 200))
        except (redis.RedisError, OSError) as error:
            return f"write through the sentinel client: {error}"
        return None if confirmed >= REPLICAS else f"WAIT confirmed {confirmed} replicas"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (problem := self.healthy()) is not None:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"sentinel setup not healthy after {timeout:g} s: {problem}")
            time.sleep(0.2)

    def kill_once(self, index: int) -> SentinelKill:
        self.wait_healthy()
        host, port = self.master()
        victim = self.node_at(port)
        result = SentinelKill(index, victim.name, port, killed_at=0.0)
        # A partition cuts both of its addresses: the sentinels watch it where clients reach
        # it, so only a whole cut leaves them (and its replicas) nothing but silence.
        target = NodeTarget(name=victim.name, role="primary", host=victim.host, port=port,
                            peer_host=victim.peer_host, pid=victim.pid)  # fmt: skip
        fault = PrimaryFault(self.fault, victim.pid, target, self.network,
                             hosts=[victim.host, victim.peer_host])  # fmt: skip
        try:
            return self._measure(index, result, victim, fault, host, port)
        finally:
            fault.end()

    def _measure(
        self,
        index: int,
        result: SentinelKill,
        victim: RedisProcess,
        fault: PrimaryFault,
        host: str,
        port: int,
    ) -> SentinelKill:
        """`kill_once` from the fault on (`fault` is ended by the caller too)."""
        killed_at = fault.inject()
        result.killed_at = killed_at
        deadline = time.monotonic() + 60
        acknowledged = None
        while acknowledged is None:
            started = time.monotonic()
            result.attempts += 1
            try:
                self.client.set(f"bench:after-kill:{index}", result.attempts)
                if int(self.client.wait(1, 100)) >= 1:
                    acknowledged = time.time()
                    break
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError("no write acknowledged within 60 s of the kill")
            time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - started)))
        result.total = acknowledged - killed_at
        new_host, new_port = self.master()
        result.promoted = self.node_at(new_port).name
        master_prefix = f"master {MASTER_NAME} {host} {port}"
        marks = {
            "detect": self.watcher.first("+sdown", killed_at, master_prefix),
            "agree": self.watcher.first("+odown", killed_at, master_prefix),
            "promote": self.watcher.first("+promoted-slave", killed_at),
            "first_write": acknowledged,
        }
        result.marks = {"killed": killed_at, **{k: v for k, v in marks.items() if v is not None}}
        previous = killed_at
        for phase in SENTINEL_PHASES:
            if marks[phase] is not None:
                result.phases[phase] = marks[phase] - previous
                previous = marks[phase]
        fault.end()  # killed, and healed, before it starts again on its port
        # The killed node comes back as a replica of the new primary (the way sentinel would
        # reconfigure it), so the next kill starts from 1 primary + 2 replicas again.
        stand_in = RedisProcess(
            name="new-primary", role="primary", shard=None, port=new_port,
            workdir=victim.workdir, peer_host=new_host,
        )  # fmt: skip
        victim.restart(replica_of=stand_in)
        writable_when_promoted(victim)
        return result


def writable_when_promoted(node: RedisProcess) -> None:
    """Sentinel, not our controllers, manages these nodes: lift the boot-time guard
    (`ratequeue.membership.NEVER_WRITABLE`) so the replica Sentinel promotes accepts writes."""
    with node.client() as conn:
        conn.config_set("min-replicas-to-write", 0)


def run_sentinel(
    workdir: Path,
    kills: int,
    fault: Fault = Fault.kill,
    network: LocalFaultBackend | None = None,
) -> list[SentinelKill]:
    results: list[SentinelKill] = []
    cluster: LocalCluster | None = None
    sentinels: list[SentinelProcess] = []
    bench: SentinelBench | None = None
    try:
        with interrupts_deferred():  # as for the testbed: start completely, then stop
            cluster = LocalCluster.start(workdir / "redis", shards=1, replicas=REPLICAS)
            for replica in cluster.shards[0].replicas:
                writable_when_promoted(replica)
            for index in range(3):
                sentinels.append(
                    start_bench_sentinel(workdir, index + 1, cluster.shards[0].primary)
                )
        bench = SentinelBench(cluster, sentinels, fault, network)
        bench.watcher.start()
        for index in range(kills):
            try:
                result = bench.kill_once(index + 1)
            except BenchmarkError as error:
                console.print(f"[red]sentinel kill {index + 1}: {error}[/]")
                results.append(SentinelKill(index + 1, "?", 0, time.time(), error=str(error)))
                break
            results.append(result)
            console.print(
                f"sentinel kill {result.index}: {result.killed} → {result.promoted}: "
                f"{result.total * 1000:5.0f} ms ("
                + ", ".join(f"{p} {v * 1000:.0f}" for p, v in result.phases.items())
                + f"; {result.attempts} attempts)"
            )
    finally:
        with interrupts_deferred():
            if bench is not None:
                bench.watcher.stop()
                with contextlib.suppress(Exception):
                    bench.client.connection_pool.disconnect()
            for sentinel in sentinels:
                sentinel.stop()
            if cluster is not None:
                cluster.stop()
    return results


# -- report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Targets:
    """Issue 12's targets for one fault and mode, fault → first acknowledged enqueue (seconds);
    None where the issue sets none."""

    total_p50_s: float | None
    total_p95_s: float
    sentinel_ratio_p50: float | None  # ratequeue's p50 over Sentinel's, same run


def targets_for(fault: Fault, *, busy: bool) -> Targets:
    """A kill: p50 <= 150 ms and p95 <= 300 ms quiet, p95 <= 1 s with both cores busy, and p50
    at most a tenth of Sentinel's; a stall or a cut peer path: p50 <= 1.5 s, p95 <= 2.5 s."""
    if fault is Fault.kill:
        if busy:
            return Targets(total_p50_s=None, total_p95_s=1.0, sentinel_ratio_p50=0.1)
        return Targets(total_p50_s=0.15, total_p95_s=0.3, sentinel_ratio_p50=0.1)
    return Targets(total_p50_s=1.5, total_p95_s=2.5, sentinel_ratio_p50=None)


def ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 1000:,.0f}"


def verdicts(summary: dict[str, dict], targets: Targets, ratio: float | None) -> dict[str, Any]:
    """Each target of `targets` met or not (None: no such target for this fault and mode, or no
    Sentinel figure to compare with)."""
    total = summary["total"]
    phases = {k: v["p50"] for k, v in summary.items() if k != "total" and v["n"]}
    dominant = max(phases, key=lambda k: phases[k]) if phases else None
    p50_target = targets.total_p50_s
    p50_met = None if p50_target is None else total["p50"] <= p50_target
    ratio_met = None
    if targets.sentinel_ratio_p50 is not None and ratio is not None:
        ratio_met = ratio <= targets.sentinel_ratio_p50
    return {
        "p50_met": p50_met,
        "p95_met": total["p95"] <= targets.total_p95_s,
        "p50_over_by": None if p50_target is None else max(0.0, total["p50"] - p50_target),
        "p95_over_by": max(0.0, total["p95"] - targets.total_p95_s),
        "sentinel_ratio_met": ratio_met,
        "dominant_phase_p50": dominant,
    }


def summary_table(title: str, summary: dict[str, dict], names: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in ("phase", "p50 ms", "p95 ms", "max ms", "share of p50 sum"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    sum_p50 = sum(summary[n]["p50"] for n in names if summary[n]["n"])
    for name in (*names, "total"):
        s = summary[name]
        share = f"{s['p50'] / sum_p50:.0%}" if name != "total" and s["n"] and sum_p50 else ""
        label = f"[bold]{PHASE_LABELS[name]}[/]" if name == "total" else PHASE_LABELS[name]
        table.add_row(label, ms(s["p50"]), ms(s["p95"]), ms(s["max"]), share)
    return table


def kills_table(kills: list[KillResult], control: str) -> Table:
    table = Table(title=f"ratequeue + Lazarus-lite on {control}, per kill (ms)")
    for column in ("#", "shard", "killed → promoted", *PHASES, "total", "workflow"):
        table.add_column(PHASE_LABELS.get(column, column), justify="right")
    for k in kills:
        if k.total is None:
            table.add_row(str(k.index), k.shard, "", *[""] * len(PHASES), "-", k.error or "")
            continue
        table.add_row(
            str(k.index), k.shard, f"{k.killed} → {k.promoted}",
            *[ms(k.phases.get(p)) for p in PHASES], ms(k.total), k.workflow_status or "",
        )  # fmt: skip
    return table


def markdown(document: dict[str, Any]) -> str:
    """The report as Markdown (for docs/benchmarks.md)."""
    sn = document["sentinel"]
    lines = []

    def summary_md(summary: dict[str, dict], names: tuple[str, ...]) -> None:
        lines.append("| phase | p50 ms | p95 ms | max ms |")
        lines.append("|---|---:|---:|---:|")
        for name in (*names, "total"):
            s = summary[name]
            label = f"**{PHASE_LABELS[name]}**" if name == "total" else PHASE_LABELS[name]
            lines.append(f"| {label} | {ms(s['p50'])} | {ms(s['p95'])} | {ms(s['max'])} |")

    fault = Fault(document.get("fault", Fault.kill))
    mode = "both cores busy" if document.get("busy") else "quiet"
    for control, rq in document["ratequeue"].items():
        n = rq["summary"]["total"]["n"]
        lines.append(
            f"ratequeue + Lazarus-lite on the {control} control store, {n} faults "
            f"({fault.label}, {mode}):\n"
        )
        summary_md(rq["summary"], PHASES)
        lines.append("\nPer kill (ms):\n")
        header = " | ".join(PHASE_LABELS[p] for p in PHASES)
        lines.append(f"| # | shard | killed → promoted | {header} | total |")
        lines.append("|---:|---|---|" + "---:|" * (len(PHASES) + 1))
        for k in rq["kills"]:
            if k["total"] is None:
                lines.append(f"| {k['index']} | {k['shard']} | failed: {k['error']} |")
                continue
            cells = " | ".join(ms(k["phases"].get(p)) for p in PHASES)
            lines.append(
                f"| {k['index']} | {k['shard']} | {k['killed']} → {k['promoted']} | {cells} | "
                f"{ms(k['total'])} |"
            )
        lines.append("")
    versus = document.get("etcd_vs_redis")
    if versus is not None:
        lines.append(
            f"etcd / redis p50 = {versus['p50_ratio']:.2f}; etcd - redis p50 = "
            f"{ms(versus['p50_difference_s'])} ms (target <= "
            f"{TARGET_ETCD_OVER_REDIS_P50 * 1000:.0f} ms: "
            f"{'met' if versus['target_met'] else 'missed'})\n"
        )
    lines.append(
        f"Redis Sentinel, {sn['summary']['total']['n']} faults measured ({fault.sentinel_label}):\n"
    )
    summary_md(sn["summary"], SENTINEL_PHASES)
    return "\n".join(lines) + "\n"


def render(document: dict[str, Any]) -> None:
    sn = document["sentinel"]

    fault = Fault(document.get("fault", Fault.kill))
    targets = document["targets"]
    mode = "both cores busy" if document.get("busy") else "quiet"

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]missed[/]"

    for control, rq in document["ratequeue"].items():
        console.print(kills_table([KillResult(**k) for k in rq["kills"]], control))
        total = rq["summary"]["total"]
        console.print(
            summary_table(
                f"ratequeue + Lazarus-lite on {control}: {fault.label} → first acknowledged "
                f"enqueue ({total['n']} kills)",
                rq["summary"],
                PHASES,
            )
        )
        v = rq["verdict"]
        p50 = f"p50 {ms(total['p50'])} ms"
        if targets.get("total_p50_s") is not None:
            p50 += f" <= {ms(targets['total_p50_s'])}: {verdict(v['p50_met'])}"
        console.print(
            f"{control}, {mode}: {p50}; p95 {ms(total['p95'])} ms <= "
            f"{ms(targets['total_p95_s'])}: {verdict(v['p95_met'])}; "
            f"largest phase (p50): {v['dominant_phase_p50']}"
        )
        if rq.get("ratio_to_sentinel_p50") is not None:
            ratio = (
                f"ratequeue-lazarus on {control} / sentinel p50 = "
                f"{rq['ratio_to_sentinel_p50']:.2f} ({ms(total['p50'])} ms / "
                f"{ms(sn['summary']['total']['p50'])} ms)"
            )
            if v.get("sentinel_ratio_met") is not None:
                ratio += (
                    f" <= {targets['sentinel_ratio_p50']:.2f}: {verdict(v['sentinel_ratio_met'])}"
                )
            console.print(ratio)
    if sn["kills"]:
        console.print(
            summary_table(
                f"Redis Sentinel: {fault.sentinel_label} → first SET + WAIT 1 "
                f"({sn['summary']['total']['n']} kills)",
                sn["summary"],
                SENTINEL_PHASES,
            )
        )
    versus = document.get("etcd_vs_redis")
    if versus is not None:
        console.print(
            f"etcd / redis p50 = {versus['p50_ratio']:.2f}; etcd - redis p50 = "
            f"{ms(versus['p50_difference_s'])} ms <= {TARGET_ETCD_OVER_REDIS_P50 * 1000:.0f}: "
            f"{verdict(versus['target_met'])}"
        )


app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    kills: int = typer.Option(None, min=1, help="ratequeue kills [default: 10, --quick 3]"),
    sentinel_kills: int = typer.Option(None, min=0, help="Sentinel kills [default: 5, --quick 2]"),
    workers: int = typer.Option(3, min=1, max=32, help="prober tasks taking turns"),
    interval_ms: float = typer.Option(
        PROBE_INTERVAL * 1000, min=1, max=1000, help="the prober starts a request this often"
    ),
    quick: bool = typer.Option(False, "--quick", help="fewer kills: a smoke run (~2 min)"),
    busy: bool = typer.Option(
        False, "--busy", help="keep every core busy with a CPU hog (normal priority) throughout"
    ),
    output: Path = typer.Option(RESULTS_DIR, help="directory for the JSON result"),
    fault: Fault = typer.Option(
        Fault.kill,
        help="kill (SIGKILL) or pause (SIGSTOP, then killed) the primary, or cut its peer path "
        "(partition: iptables, needs root; then killed and healed)",
    ),
    control: str = typer.Option(
        "both", help="the coordination store(s) to measure: redis | etcd | both"
    ),
) -> None:
    if control not in (*BACKENDS, "both"):
        raise typer.BadParameter(f"{control!r} is not redis, etcd or both", param_hint="--control")
    controls = BACKENDS if control == "both" else (control,)
    with cpu_hogs(every_core() if busy else 0):
        measure(kills, sentinel_kills, workers, interval_ms, quick, busy, output, controls, fault)


def run_backend(
    control: ControlBackend,
    workdir: Path,
    output: Path,
    started: datetime,
    kills: int,
    workers: int,
    interval_ms: float,
    fault: Fault = Fault.kill,
    network: LocalFaultBackend | None = None,
) -> list[KillResult]:
    """`kills` kills on a fresh testbed whose coordination store is `control`."""
    directory = workdir / f"testbed-{control}"
    console.print(f"starting the testbed on {control} in {directory} (3 shards x 1 + {REPLICAS})")
    results: list[KillResult] = []
    try:
        with contextlib.ExitStack() as stack:
            # A Ctrl-C while the testbed starts waits until it is up (and then stops it): cut
            # short, the start could leave a process it had just spawned behind.
            with interrupts_deferred():
                state = stack.enter_context(
                    running_testbed(
                        directory,
                        shards=3,
                        replicas=REPLICAS,
                        controller_args=["--rate-limit-threshold", str(max(10, kills + 5))],
                        control=control,
                    )
                )
            results = asyncio.run(
                run_ratequeue(state, directory, kills, workers, interval_ms / 1000, fault, network)
            )
    finally:
        finish_teardown(directory)
        if any(k.error for k in results) and (directory / "logs").is_dir():
            kept = output / f"failover-{started.strftime('%Y%m%dT%H%M%SZ')}-{control}-logs"
            shutil.copytree(directory / "logs", kept / "logs", dirs_exist_ok=True)
            for log in (directory / "redis").glob("*.log"):
                shutil.copy(log, kept / "logs" / log.name)
            console.print(f"[yellow]kills failed: testbed logs kept in {kept}[/]")
    return results


def etcd_vs_redis(sections: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The etcd backend's total p50 against the Redis one's, when both were measured."""
    if not all(control in sections for control in BACKENDS):
        return None
    redis_p50 = sections["redis"]["summary"]["total"]["p50"]
    etcd_p50 = sections["etcd"]["summary"]["total"]["p50"]
    if not (
        sections["redis"]["summary"]["total"]["n"] and sections["etcd"]["summary"]["total"]["n"]
    ):
        return None
    return {
        "p50_ratio": etcd_p50 / redis_p50,
        "p50_difference_s": etcd_p50 - redis_p50,
        "target_met": etcd_p50 - redis_p50 <= TARGET_ETCD_OVER_REDIS_P50,
    }


def measure(
    kills: int | None,
    sentinel_kills: int | None,
    workers: int,
    interval_ms: float,
    quick: bool,
    busy: bool,
    output: Path,
    controls: tuple[ControlBackend, ...] = BACKENDS,
    fault: Fault = Fault.kill,
) -> None:
    kills = kills or (3 if quick else 10)
    sentinel_kills = sentinel_kills if sentinel_kills is not None else (2 if quick else 5)
    started = datetime.now(UTC)
    host = machine()
    console.print(
        f"machine: {host['cpu_model']}, {host['cpu_cores']} cores, {host['memory_gib']} GiB, "
        f"{host['kernel']}; redis-server {host['redis_server']}; {host['python']}, "
        f"redis-py {host['redis_py']}"
    )
    rq_kills: dict[str, list[KillResult]] = {}
    sn_kills: list[SentinelKill] = []
    with (
        tempfile.TemporaryDirectory(prefix="rq-failover-") as tmp,
        network_faults(fault) as network,
    ):
        for control in controls:
            rq_kills[control] = run_backend(
                control, Path(tmp), output, started, kills, workers, interval_ms, fault, network
            )
        if sentinel_kills:
            console.print("starting Redis Sentinel: 1 primary + 2 replicas, 3 sentinels")
            sn_kills = run_sentinel(Path(tmp) / "sentinel", sentinel_kills, fault, network)
    sn_summary = phase_summary(sn_kills, SENTINEL_PHASES)
    targets = targets_for(fault, busy=busy)
    sections: dict[str, dict[str, Any]] = {}
    for control, results in rq_kills.items():
        summary = phase_summary(results, PHASES)
        ratio = None
        if summary["total"]["n"] and sn_summary["total"]["n"]:
            ratio = summary["total"]["p50"] / sn_summary["total"]["p50"]
        sections[control] = {
            "kills": [asdict(k) for k in results],
            "summary": summary,
            "verdict": verdicts(summary, targets, ratio),
            "ratio_to_sentinel_p50": ratio,
        }
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host | {"loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]},
        "quick": quick,
        "busy": busy,
        "fault": fault.value,
        "options": {
            "kills": kills,
            "sentinel_kills": sentinel_kills,
            "workers": workers,
            "probe_interval_s": interval_ms / 1000,
            "controls": list(controls),
        },
        "targets": asdict(targets) | {"etcd_over_redis_p50_s": TARGET_ETCD_OVER_REDIS_P50},
        "ratequeue": sections,
        "sentinel": {
            "config": {
                "quorum": 2,
                "down_after_ms": 1000,
                "failover_timeout_ms": 10000,
                "parallel_syncs": 1,
                "write": "SET + WAIT 1 100, every 20 ms",
            },
            "kills": [asdict(k) for k in sn_kills],
            "summary": sn_summary,
        },
        "etcd_vs_redis": etcd_vs_redis(sections),
    }
    render(document)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"failover-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=2))
    path.with_suffix(".md").write_text(markdown(document))
    console.print(f"written {path} (and {path.with_suffix('.md').name})")


if __name__ == "__main__":
    app()
