"""The staging soak (`ratequeue-chaos soak`): bring the compose staging deployment up, run one
experiment per cycle on a compressed schedule over kill, pause and partition of primaries and
replicas across every shard, and after each cycle check what weeks of `ratequeue-chaos run
--every 4h` need to hold: nothing acknowledged lost, every shard back to a primary and its full
replica count in sync, the number of the deployment's containers within its bound, the control
store not growing from cycle to cycle (`chaos.soak_growth`).

A cycle that fails on the way (the engine or a store refusing for a moment) is recorded as a
failed cycle, with the error, and the soak goes on to the next.

Between a cycle's run and its checks, containers a kill left exited are started again (the
machine comes back): the controllers' shard keeper must then rejoin or release them, as it would
for a host that rebooted. Nothing else is touched by hand.

With `services` (`--kill-services api,controller`), each cycle also SIGKILLs one of those
containers (in turn) just after its node fault is in (`chaos.soak_services`); the cycle then
also needs that container back through its restart policy, answering, within a bound. A cycle
that kills the API leaves out the availability and recovery-time hypotheses (no shard is
available without the only API, and recovery is timed to a write through it). The load retries
a refused or unanswered enqueue with the same id, so what the API never acknowledged is not
counted, and nothing acknowledged may be lost.

With `control` etcd (`--control etcd`), staging is brought up (and taken down) with the etcd
override beside the compose file (`docker-compose.etcd.yml`: three etcd members hold the
coordination store; the control Redis keeps the event stream and the record log), the cycles
run against the target `deploy/staging-etcd-target.yaml` describes (the etcd members at their
published ports, RQ_ETCD{1,2,3}_PORT), every settle also needs the three members answering with
one leader, and the census counts etcd's keys without a lease beside the control Redis's. The
members are staging's own containers (in the compose count, never faulted by the rotation).

Not for: running one experiment (`ratequeue-chaos run`), building images
(`deploy/build-images.sh`), or judging a run's hypotheses (`chaos.hypotheses`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import redis
import requests.exceptions

from chaos.docker_engine import open_engine
from chaos.docker_targets import discover_nodes
from chaos.errors import ChaosError, TargetError
from chaos.experiments import Experiment, load_experiment
from chaos.journal import Journal, Say
from chaos.runner import ExperimentRunner
from chaos.scheduler import run_lock
from chaos.soak_deliveries import Undelivered, describe_counts, drain_leftovers
from chaos.soak_growth import Census, judge_growth, take_census, take_etcd_census, with_etcd
from chaos.soak_services import (
    ServiceKill,
    ServiceKiller,
    service_of_cycle,
)
from chaos.store_members import members_not_serving
from chaos.targets import Deployment
from chaos.testbed import ControlBackend
from common.errors import EtcdError
from lazarus_lite.docker_actuator import LABEL_DEPLOYMENT, LABEL_NAME, LABEL_ROLE
from ratequeue.topology import NodeRef, Topology

# The fault of each cycle, in turn: the first three cover kill, pause and partition, and
# primaries and replicas both.
ROTATION: tuple[tuple[str, str], ...] = (
    ("kill", "primary"),
    ("pause", "replica"),
    ("blackhole", "primary"),
    ("kill", "replica"),
    ("pause", "primary"),
    ("blackhole", "replica"),
)
# The scenario each fault is taken from (load, probes, hypotheses); the replica faults other
# than kill reuse replica_kill's expectations (nothing promoted, nothing lost), timed.
TEMPLATES = {
    ("kill", "primary"): "primary_kill.yaml",
    ("pause", "primary"): "primary_pause.yaml",
    ("blackhole", "primary"): "primary_partition.yaml",
    ("kill", "replica"): "replica_kill.yaml",
    ("pause", "replica"): "replica_kill.yaml",
    ("blackhole", "replica"): "replica_kill.yaml",
}
REPLICA_FAULT_SECONDS = 4.0
# Hypotheses a cycle that kills the API leaves out: while the only API restarts, no shard is
# available to clients, and recovery is measured to the first write acknowledged through the
# API, so they would measure the API's absence, not the node fault's reach or the failover
# (which the shards being whole within the settle bound still checks).
NOT_JUDGED_WITHOUT_API = frozenset(
    {"other_shards_availability", "faulted_shard_availability", "recovered_within"}
)
# The controllers' incident rate-limit window the soak brings staging up with (unless
# RQ_RATE_LIMIT_WINDOW is set): every other cycle fails a primary and a cycle takes 30-60 s, so
# over the default 600 s about one incident a cycle keeps the window at 9-11 incidents, at the
# limit of 10: run E's cycle 19 was refused its failover (docs/staging-runs.md). 120 s holds two
# or three cycles' incidents, far from the limit, and still stops a runaway (more than 10 in 2
# minutes). A 4-hourly schedule never comes near either window.
SOAK_RATE_LIMIT_WINDOW = 120.0
PROVISIONED_BY = "ratequeue.provisioned-by"
# The compose services that provision replacement containers (through the Docker actuator).
CONTROLLER_SERVICES = ("lazarus1", "lazarus2", "lazarus3")
# The override that puts staging's coordination store on three etcd members, beside the compose
# file (`--control etcd`).
ETCD_OVERRIDE = "docker-compose.etcd.yml"
SHARD_ROLES = frozenset({"primary", "replica"})


@dataclass
class CycleResult:
    cycle: int
    fault: str
    shard: str
    verdict: str
    acknowledged: int
    lost: int
    settled_seconds: float | None
    shards: str
    containers: int
    container_bound: int
    control_memory: int
    census: Census | None = None
    growth: str = ""
    restarted: list[str] = field(default_factory=list)
    service: str = ""
    journal: str = ""
    misses: list[str] = field(default_factory=list)
    late: dict[int, int] = field(default_factory=dict)
    """Earlier cycles' acknowledged messages this cycle delivered: cycle -> how many."""
    failed_dequeues: int = 0
    dequeue_failures: str = ""
    """How the load's dequeues failed in the run, and when from the fault (the journal's)."""

    @property
    def ok(self) -> bool:
        return not self.misses


@dataclass
class StagingEndpoints:
    """Where the host reaches staging (the compose file's published ports, same variables)."""

    api_port: int = 17080
    lazarus_ports: tuple[int, int, int] = (17091, 17092, 17093)
    control_port: int = 17000
    deployment: str = "ratequeue"
    control: ControlBackend = "redis"
    etcd_ports: tuple[int, int, int] = (17001, 17002, 17003)
    """The etcd members' published client ports (docker-compose.etcd.yml), with `control` etcd."""

    @classmethod
    def from_environment(cls, control: ControlBackend = "redis") -> StagingEndpoints:
        """The ports the compose file's variables name (its defaults when unset); a value that
        is not a port is a ChaosError naming the variable. The etcd members' ports are read only
        on etcd."""

        def port(name: str, default: int) -> int:
            text = os.environ.get(name)
            if text is None:
                return default
            try:
                value = int(text)
            except ValueError:
                value = 0
            if not 0 < value < 65536:
                raise ChaosError(f"{name}: expected a TCP port (1-65535), got {text!r}")
            return value

        return cls(
            api_port=port("RQ_API_PORT", 17080),
            lazarus_ports=(
                port("RQ_LAZARUS1_PORT", 17091),
                port("RQ_LAZARUS2_PORT", 17092),
                port("RQ_LAZARUS3_PORT", 17093),
            ),
            control_port=port("RQ_CONTROL_PORT", 17000),
            control=control,
            etcd_ports=(
                tuple(port(f"RQ_ETCD{i}_PORT", d) for i, d in enumerate(cls.etcd_ports, 1))  # type: ignore[arg-type]
                if control == "etcd"
                else cls.etcd_ports
            ),
        )

    def etcd_endpoints(self) -> list[str]:
        """The members' client URLs from the host (none with `control` redis)."""
        if self.control != "etcd":
            return []
        return [f"http://127.0.0.1:{port}" for port in self.etcd_ports]

    def target(self) -> Deployment:
        """What deploy/staging-target.yaml (or, on etcd, deploy/staging-etcd-target.yaml)
        says, at these ports."""
        return Deployment(
            name="staging",
            environment="stage",
            api=f"http://127.0.0.1:{self.api_port}",
            control=f"redis://127.0.0.1:{self.control_port}/0",
            etcd_endpoints=",".join(self.etcd_endpoints()) or None,
            lazarus=[f"http://127.0.0.1:{p}" for p in self.lazarus_ports],
            default_backend="docker",
            docker_deployment=self.deployment,
        )


def staging_compose_files(compose_file: Path, control: ControlBackend) -> list[Path]:
    """The compose files staging is brought up with: `compose_file`, and on etcd the etcd
    override beside it; ChaosError naming `--control` when that override is not there."""
    if control != "etcd":
        return [compose_file]
    override = compose_file.parent / ETCD_OVERRIDE
    if not override.is_file():
        raise ChaosError(
            f"--control etcd: no {ETCD_OVERRIDE} beside {compose_file} (the override that "
            "adds staging's three etcd members)"
        )
    return [compose_file, override]


def fault_of_cycle(cycle: int, shards: list[str]) -> tuple[str, str, str]:
    """(action, role, shard) of cycle 1, 2, ...: the rotation in turn, and the shard moving on
    by one each cycle and by one more every full rotation, so every pairing comes round."""
    index = cycle - 1
    action, role = ROTATION[index % len(ROTATION)]
    shard = shards[(index + index // len(ROTATION)) % len(shards)]
    return action, role, shard


def experiment_of_cycle(
    scenarios: Path, action: str, role: str, shard: str, *, api_away_up_to: float | None = None
) -> Experiment:
    """The template's experiment on `shard`; with `api_away_up_to` (the API is killed in the
    run and may take that long to come back), without what is measured through the API, and a
    drain that long longer: what was acknowledged is delivered once the API is back."""
    experiment = load_experiment(scenarios / TEMPLATES[(action, role)])
    [step] = experiment.method
    update: dict[str, object] = {
        "action": action,
        "target": step.target.model_copy(update={"shard": shard}),
    }
    if role == "replica" and action != "kill":
        update["duration"] = REPLICA_FAULT_SECONDS
    title = f"soak: {action} {role} of {shard}"
    changes: dict[str, object] = {"title": title, "method": [step.model_copy(update=update)]}
    if api_away_up_to is not None:
        changes["title"] = f"{title}, the API killed"
        changes["hypotheses"] = [
            h for h in experiment.hypotheses if h.type not in NOT_JUDGED_WITHOUT_API
        ]
        drain = experiment.load.drain_seconds + api_away_up_to
        changes["load"] = experiment.load.model_copy(update={"drain_seconds": drain})
    return experiment.model_copy(update=changes)


def compose_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the soak's `docker compose`: `environ`, with a fresh API token and the
    soak's rate-limit window where `environ` sets none."""
    env = dict(environ)
    env.setdefault("LAZARUS_API_TOKEN", secrets.token_urlsafe(24))
    env.setdefault("RQ_RATE_LIMIT_WINDOW", f"{SOAK_RATE_LIMIT_WINDOW:g}")
    return env


class Staging:
    """The compose deployment: up, down, and what the checks read from it."""

    def __init__(self, compose_files: list[Path], endpoints: StagingEndpoints, say: Say) -> None:
        self.compose_files = compose_files
        self.endpoints = endpoints
        self.say = say
        self.engine = open_engine(timeout=60)

    def _compose(self, *args: str, timeout: float = 600) -> None:
        env = compose_environment(os.environ)
        files = [arg for path in self.compose_files for arg in ("-f", str(path))]
        command = ["docker", "compose", *files, *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ChaosError(
                f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-800:]}"
            )

    def up(self, healthy_within: float = 180.0) -> None:
        # The scheduled chaos service stays at 0: the soak is the only runner.
        try:
            self._compose("up", "-d", "--wait", "--scale", "chaos=0")
        except ChaosError as error:
            # Everything was started; `--wait` gave up on a health check that timed out (a
            # probe starts a Python interpreter, which a loaded host can take over its 4 s
            # to do). Health comes back with the next check that passes: wait for that.
            if "is unhealthy" not in str(error):
                raise
            self.say(f"staging started, not yet healthy; waiting up to {healthy_within:g} s")
            if not self._healthy_within(healthy_within):
                raise

    def _healthy_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            checked = [c for c in self.containers() if c.attrs["State"].get("Health")]
            if checked and all(c.attrs["State"]["Health"]["Status"] == "healthy" for c in checked):
                return True
            time.sleep(2)
        return False

    def down(self) -> None:
        # The controllers first: one still running can provision a replacement between the
        # removal below and `down`, whose network then stays in use ("has active endpoints").
        try:
            self._compose("stop", *CONTROLLER_SERVICES)
        except ChaosError as error:  # taken down all the same; `down` says if it cannot
            self.say(f"stopping the controllers first failed: {error}")
        for container in self.containers(provisioned_only=True):
            container.remove(force=True, v=True)
        self._compose("down", "-v", "--remove-orphans")
        self.engine.close()

    def containers(self, provisioned_only: bool = False) -> list:
        labels = [f"{LABEL_DEPLOYMENT}={self.endpoints.deployment}"]
        if provisioned_only:
            labels.append(PROVISIONED_BY)
        # ignore_removed: the keeper removes a released replacement at any moment (one removed
        # between the listing and its inspection failed cycle 25 of run E with a 404).
        return self.engine.containers.list(all=True, filters={"label": labels}, ignore_removed=True)

    def compose_container_count(self) -> int:
        return sum(1 for c in self.containers() if PROVISIONED_BY not in c.labels)

    def start_exited_shard_nodes(self) -> list[str]:
        """Start the Redis containers a kill left exited (the host comes back); their names."""
        started = []
        for container in self.containers():
            if container.status != "running" and container.labels.get(LABEL_ROLE) in SHARD_ROLES:
                container.start()
                started.append(container.labels.get(LABEL_NAME, container.name))
        return started

    def health_url(self, name: str) -> str:
        """Where the host asks service container `name` (api, lazarus1-3) for /healthz."""
        if name == "api":
            return f"http://127.0.0.1:{self.endpoints.api_port}"
        port = self.endpoints.lazarus_ports[int(name.removeprefix("lazarus")) - 1]
        return f"http://127.0.0.1:{port}"

    def control_census(self) -> Census:
        """The control Redis's census, and on etcd the members' keys without a lease with it."""
        control = redis.Redis(port=self.endpoints.control_port, socket_timeout=5)
        try:
            census = take_census(control)
        finally:
            control.close()
        if self.endpoints.control != "etcd":
            return census
        families, family_bytes = asyncio.run(take_etcd_census(self.endpoints.etcd_endpoints()))
        return with_etcd(census, families, family_bytes)


def replication_of(node: NodeRef) -> dict | None:
    connection = redis.Redis(host=node.host, port=node.port, socket_timeout=1,
                             socket_connect_timeout=1)  # fmt: skip
    try:
        return dict(connection.info("replication"))
    except (redis.RedisError, OSError):
        return None
    finally:
        connection.close()


def shards_whole(topology: Topology) -> list[str]:
    """What keeps shards from being whole (empty: each has a primary answering as one, and its
    full replica count, each replica online at the primary and at most 1 s behind)."""
    problems = []
    for shard in topology.shards:
        info = replication_of(shard.primary)
        if info is None or info.get("role") != "master":
            problems.append(f"{shard.id}: primary {shard.primary.name} does not answer as one")
            continue
        wanted = shard.replica_target if shard.replica_target is not None else 2
        if len(shard.replicas) != wanted:
            problems.append(f"{shard.id}: {len(shard.replicas)} of {wanted} replicas listed")
        followers = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        online = {f.get("ip") for f in followers if f.get("state") == "online"
                  and int(f.get("lag", 99)) <= 1}  # fmt: skip
        for replica in shard.replicas:
            if (replica.peer_host or replica.host) not in online:
                problems.append(f"{shard.id}: {replica.name} not in sync with {shard.primary.name}")
    return problems


def stray_primaries(staging: Staging, topology: Topology) -> list[str]:
    """Shard nodes the topology does not list as a primary that answer as one (a partitioned
    old primary that was never parked, say): each a second writer in waiting."""
    listed = {s.primary.name for s in topology.shards}
    problems = []
    for node in discover_nodes(staging.endpoints.deployment, topology, staging.engine):
        if node.role not in SHARD_ROLES or node.name in listed:
            continue
        info = replication_of(NodeRef(name=node.name, host=node.host, port=node.port or 6379))
        if info is not None and info.get("role") == "master":
            problems.append(f"{node.name} answers as a primary the topology does not list")
    return problems


def container_bound(staging: Staging, topology: Topology) -> int:
    """The containers the deployment may have: the compose file's own, plus a node and its
    sensor for each node the controllers provisioned that the topology still lists or holds."""
    kept = {r.name for s in topology.shards for r in [s.primary, *s.replicas]}
    kept |= {h.name for s in topology.shards for h in s.forensics}
    provisioned = {
        c.labels.get(LABEL_NAME)
        for c in staging.containers(provisioned_only=True)
        if c.labels.get(LABEL_ROLE) in SHARD_ROLES
    }
    return staging.compose_container_count() + 2 * len(provisioned & kept)


@dataclass
class Settled:
    """What `settle` found: the seconds it took (None: not whole in time), what is still wrong,
    and the container count and bound it judged last (None without `staging`)."""

    seconds: float | None
    state: str
    containers: int | None = None
    container_bound: int | None = None


def settle(
    deployment: Deployment,
    within: float,
    stop: threading.Event,
    staging: Staging | None = None,
) -> Settled:
    """Wait until every shard is whole (and, with `staging`, no other shard node answers as a
    primary and the containers are within their bound: a released replacement is removed a
    moment after it leaves the topology); on etcd, also until every member answers with one
    leader."""
    members = deployment.etcd_endpoints.split(",") if deployment.etcd_endpoints else []
    started = time.monotonic()
    problems = ["not checked"]
    count: int | None = None
    bound: int | None = None
    while not stop.is_set():
        count = bound = None  # only what this pass judged
        try:
            topology = deployment.topology()
            problems = shards_whole(topology)
            if members and not problems:
                problems = members_not_serving(members)
            if staging is not None and not problems:
                problems = stray_primaries(staging, topology)
            if staging is not None and not problems:
                count, bound = len(staging.containers()), container_bound(staging, topology)
                if count > bound:
                    problems = [f"{count} containers, bound {bound}"]
        except TargetError as error:
            problems = [str(error)]
        if not problems:
            return Settled(time.monotonic() - started, "whole", count, bound)
        if time.monotonic() - started > within:
            break
        stop.wait(1.0)
    return Settled(None, "; ".join(problems), count, bound)


def run_cycle(
    cycle: int,
    staging: Staging,
    deployment: Deployment,
    *,
    scenarios: Path,
    journal_dir: Path,
    settle_seconds: float,
    say: Say,
    stop: threading.Event,
    services: list[str] | None = None,
    service_back_seconds: float = 60.0,
    undelivered: Undelivered | None = None,
) -> CycleResult:
    """One cycle and its checks; `undelivered` carries the acknowledged ids not delivered
    within their run's drain from cycle to cycle (`chaos.soak_deliveries`)."""
    undelivered = undelivered if undelivered is not None else Undelivered()
    shards = [s.id for s in deployment.topology().shards]
    action, role, shard = fault_of_cycle(cycle, shards)
    victim = service_of_cycle(cycle, services or [])
    api_away = service_back_seconds if victim == "api" else None
    experiment = experiment_of_cycle(scenarios, action, role, shard, api_away_up_to=api_away)
    say(f"cycle {cycle}: {experiment.title}" + (f"; kill {victim}" if victim else ""))
    killer = ServiceKiller(staging.engine, staging.endpoints.deployment)
    kill = ServiceKill(victim, staging.health_url(victim)) if victim else None
    on_fault = (
        killer.kill_after_fault(kill, service_back_seconds, stop) if kill else lambda active: None
    )
    budget = experiment.load.duration + experiment.watch_seconds + 120
    with run_lock(deployment, f"soak:{os.getpid()}", budget):
        runner = ExperimentRunner(
            deployment, journal_dir=journal_dir, say=say, stop=stop, on_fault=on_fault
        )
        journal: Journal = runner.run(experiment, f"soak cycle {cycle}")
    if kill is not None:
        killer.finish(kill)
        say(f"service kill: {kill.summary}")
    restarted = staging.start_exited_shard_nodes()
    if restarted:
        say(f"started again (the host came back): {', '.join(restarted)}")
    settled = settle(deployment, settle_seconds, stop, staging)
    # The count the settle judged, not a second one: a released replacement's container may be
    # on its way out between two listings (run F's cycle 25 counted it once more, 40 of 38).
    containers, bound = settled.containers, settled.container_bound
    if containers is None or bound is None:
        containers = len(staging.containers())
        bound = container_bound(staging, deployment.topology())
    census = staging.control_census()
    result = CycleResult(
        cycle=cycle,
        fault=f"{action} {role}",
        shard=shard,
        verdict=journal.verdict,
        acknowledged=int(journal.load.get("acknowledged", 0)),
        lost=int(journal.load.get("lost", -1)),
        settled_seconds=settled.seconds,
        shards=settled.state,
        containers=containers,
        container_bound=bound,
        control_memory=census.used_memory,
        census=census,
        restarted=restarted,
        service="" if kill is None else kill.summary,
        journal=journal.run_id,
        failed_dequeues=int(journal.load.get("failed_dequeues", 0)),
        dequeue_failures=str(journal.load.get("dequeue_failures", "")),
    )
    if journal.verdict != "passed":
        failed = [h.hypothesis for h in journal.hypotheses if not h.ok]
        result.misses.append(
            f"run {journal.verdict} ({', '.join(failed) or '; '.join(journal.errors)})"
        )
    if result.dequeue_failures:
        say(f"dequeues failed (from the fault): {result.dequeue_failures}")
    # Earlier cycles' messages this one delivered first: none of this cycle's own is foreign.
    result.late = undelivered.delivered(journal.load.get("foreign_ids", []))
    undelivered.left_by(cycle, journal.load.get("lost_ids", []))
    if result.lost != 0 or result.acknowledged == 0:
        result.misses.append(
            f"{result.lost} of {result.acknowledged} acknowledged not delivered within the "
            f"run's drain (dequeues failed: {result.dequeue_failures or 'none'})"
        )
    if settled.seconds is None:
        result.misses.append(f"not whole within {settle_seconds:g} s: {settled.state}")
    if containers > bound:
        result.misses.append(f"{containers} containers, bound {bound}")
    if kill is not None and kill.error:
        result.misses.append(kill.summary)
    elif kill is not None and kill.back_seconds is None:
        result.misses.append(
            f"{kill.name} not back through its restart policy within {service_back_seconds:g} s"
        )
    return result


# What a cycle may meet that passes (an engine, a store or a node refusing for a moment): the
# cycle is recorded as failed with it, and the soak goes on.
CYCLE_ERRORS = (
    ChaosError,
    EtcdError,  # the etcd members' census or settle after quorum was lost: a failed cycle
    OSError,
    subprocess.SubprocessError,
    redis.RedisError,
    docker.errors.DockerException,
    requests.exceptions.RequestException,
)


def failed_cycle(cycle: int, shards: list[str], error: Exception) -> CycleResult:
    action, role, shard = fault_of_cycle(cycle, shards) if shards else ("?", "?", "?")
    return CycleResult(cycle=cycle, fault=f"{action} {role}", shard=shard, verdict="error",
                       acknowledged=0, lost=-1, settled_seconds=None, shards="not checked",
                       containers=0, container_bound=0, control_memory=0,
                       misses=[f"the cycle failed: {type(error).__name__}: {error}"])  # fmt: skip


def judge_leftovers(
    last: CycleResult,
    deployment: Deployment,
    undelivered: Undelivered,
    within: float,
    say: Say,
) -> None:
    """After the last cycle: deliver what earlier cycles left in the queues; what is still not
    delivered within `within` seconds is a miss of the last cycle's row (where the table ends),
    worded as what was measured: not delivered within the drain (lost, or stuck behind a
    backlog the drain did not outlast)."""
    say(f"final drain: {describe_counts(undelivered.by_cycle())} not delivered yet")
    late = drain_leftovers(deployment.api, undelivered, within)
    for cycle, count in late.items():
        last.late[cycle] = last.late.get(cycle, 0) + count
    if undelivered.waiting:
        last.misses.append(
            f"not delivered within the final drain ({within:g} s): "
            f"{describe_counts(undelivered.by_cycle())} "
            f"(e.g. {sorted(undelivered.waiting)[:5]})"
        )


CENSUS_FILE = "soak-censuses.jsonl"


def record_census(journal_dir: Path, cycle: int, census: Census) -> None:
    """Append the cycle's census to `CENSUS_FILE` beside the journals: the growth judge's input,
    kept so a soak's series can be read (and judged again) after the run."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"cycle": cycle, **dataclasses.asdict(census)}, sort_keys=True)
    with open(journal_dir / CENSUS_FILE, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def soak(
    cycles: int,
    *,
    compose_files: list[Path],
    scenarios: Path,
    journal_dir: Path,
    endpoints: StagingEndpoints,
    bring_up: bool,
    take_down: bool,
    gap_seconds: float,
    settle_seconds: float,
    growth_bytes_per_cycle: float,
    say: Say,
    stop: threading.Event,
    services: list[str] | None = None,
    service_back_seconds: float = 60.0,
    on_cycle: Callable[[CycleResult], None] = lambda result: None,
) -> list[CycleResult]:
    """Run the cycles (all of them, also after a miss or a failed cycle: the table shows every
    one); from the seventh on, each cycle's misses include the control store's growth so far."""
    staging = Staging(compose_files, endpoints, say)
    deployment = endpoints.target()
    results: list[CycleResult] = []
    try:
        if bring_up:
            say("starting staging: docker compose up -d --wait (chaos service at 0)")
            staging.up()
        before = settle(deployment, settle_seconds, stop)
        if before.seconds is None:
            raise ChaosError(f"staging is not whole before the first cycle: {before.state}")
        nodes = discover_nodes(endpoints.deployment, deployment.topology(), staging.engine)
        say(f"staging whole: {len(nodes)} containers found by their labels")
        shards = [s.id for s in deployment.topology().shards]
        censuses: list[Census] = []
        undelivered = Undelivered()
        for cycle in range(1, cycles + 1):
            if stop.is_set():
                break
            try:
                result = run_cycle(
                    cycle,
                    staging,
                    deployment,
                    scenarios=scenarios,
                    journal_dir=journal_dir,
                    settle_seconds=settle_seconds,
                    say=say,
                    stop=stop,
                    services=services,
                    service_back_seconds=service_back_seconds,
                    undelivered=undelivered,
                )
            except CYCLE_ERRORS as error:
                result = failed_cycle(cycle, shards, error)
                say(f"cycle {cycle} failed: {error}")
            if result.census is not None:
                censuses.append(result.census)
                record_census(journal_dir, cycle, result.census)
                growth = judge_growth(censuses, bytes_per_cycle=growth_bytes_per_cycle)
                result.growth = growth.describe()
                result.misses.extend(growth.misses)
            results.append(result)
            on_cycle(result)
            stop.wait(gap_seconds)
        if results and undelivered.waiting:
            judge_leftovers(results[-1], deployment, undelivered, settle_seconds, say)
    finally:
        if take_down:
            say("taking staging down (the provisioned containers first)")
            staging.down()
    return results
