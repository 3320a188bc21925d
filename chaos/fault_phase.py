"""The fault phase of a run: the method's steps applied at their times (faults injected through
their backends on the nodes their selectors pick, approval gates approved), and the rollbacks,
which always run. Not for: watching the recovery (see `recovery_watch`) or the faults'
mechanics (see `chaos.faults`).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.controller_answers import ControllerAnswers, waiting_gates
from chaos.errors import ChaosError, FaultError, RunAborted, TargetError
from chaos.experiments import ApproveStep, Experiment, FaultStep, Selector
from chaos.faults.base import FaultBackend, InjectedFault
from chaos.halting import sleep_until
from chaos.journal import Journal, Say
from chaos.store_members import control_store, etcd_member
from chaos.targets import Deployment, DeploymentNode, ShardChoice
from ratequeue.topology import Topology

# The coordination store's own nodes (the control Redis, etcd members).
STORE_ROLES = frozenset({"control", "etcd"})


def open_backend(name: str, journal_dir: Path | None = None) -> FaultBackend:
    """The backend called `name`; the docker one writes its faults down in `journal_dir` while
    they are in force (see `chaos.faults.docker_leftovers`)."""
    if name == "local":
        from chaos.faults.local.backend import LocalFaultBackend

        return LocalFaultBackend()
    if name == "docker":
        from chaos.faults.docker import DockerFaultBackend
        from chaos.faults.docker_leftovers import PendingDockerFaults

        pending = PendingDockerFaults(journal_dir) if journal_dir is not None else None
        return DockerFaultBackend(pending=pending)
    if name == "gremlin":
        from chaos.faults.gremlin import GremlinFaultBackend

        return GremlinFaultBackend.from_env()
    raise FaultError(f"unknown fault backend {name!r}")


class FaultPhase:
    def __init__(
        self,
        deployment: Deployment,
        controllers: ControllerAnswers,
        *,
        rng: random.Random,
        stop: threading.Event,
        say: Say,
        backends: dict[str, FaultBackend] | None = None,
        on_fault: Callable[[bool], None] = lambda active: None,
        journal_dir: Path | None = None,
    ) -> None:
        self.deployment = deployment
        self.journal_dir = journal_dir
        self.on_fault = on_fault
        self.controllers = controllers
        self.rng = rng
        self.stop = stop
        self.say = say
        self._backends = dict(backends or {})
        self.primary_faulted: set[str] = set()
        self._last_topology: Topology | None = None

    def perform(
        self,
        experiment: Experiment,
        choice: ShardChoice,
        load_started: float,
        injected: list[InjectedFault],
        faulted: set[str],
        journal: Journal,
    ) -> None:
        """Apply the method's steps at their times; `injected` and `faulted` (shards whose
        Redis nodes were hit) are filled as it goes, so rollbacks see every fault."""
        # A shard map to fall back on should a step take the store away (`_topology`).
        with contextlib.suppress(TargetError):
            self._last_topology = self.deployment.topology()
        for step in sorted(experiment.method, key=lambda s: s.at):
            sleep_until(self.stop, load_started + step.at)
            self._wait_for_condition(step.when, choice, timeout=experiment.watch_seconds)
            if isinstance(step, ApproveStep):
                self.controllers.approve(step.approve, choice.chosen)
                continue
            shard = choice.shard_of(step.target)
            for fault in self.inject_step(step, shard, injected):
                if fault.target.role in {"primary", "replica"}:
                    faulted.add(shard)
                journal.faults.append(fault.summary())
                # A backend's note says how the fault differs from what the step asked for
                # (a blackhole that cut more than the peer path, say).
                note = fault.details.get("note")
                journal.mark(
                    "fault_injected",
                    fault.injected_at,
                    fault.injected_at,
                    f"{step.action} {fault.target.name} via {self.backend_name(step)}"
                    + (f": {note}" if note else ""),
                )

    def inject_step(
        self, step: FaultStep, shard: str, injected: list[InjectedFault]
    ) -> list[InjectedFault]:
        """Inject `step` on every node its selector picks in `shard`; the step's faults.
        Each is appended to `injected` as soon as it is in, so should a later node's injection
        fail, the rollback still finds the earlier ones."""
        faults = []
        for node in self.select(step.target, shard):
            fault = self.inject(step, node)
            injected.append(fault)
            faults.append(fault)
            self.on_fault(True)
            if node.role == "primary" and step.action in {"kill", "pause", "stop", "blackhole"}:
                self.primary_faulted.add(shard)
            note = fault.details.get("note")
            self.say(
                f"fault: {step.action} {node.name} ({self.backend_name(step)})"
                + (f": {note}" if note else "")
            )
        return faults

    def select(self, selector: Selector, shard: str) -> list[DeploymentNode]:
        if selector.role == "etcd_member":
            return [etcd_member(self.deployment.nodes, selector.member or "random", self.rng)]
        if selector.role == "control_store":
            return [control_store(self.deployment.nodes)]
        topology = self._topology()
        if selector.role in {"primary", "replica"}:
            entry = topology.shard(shard)
            refs = [entry.primary] if selector.role == "primary" else list(entry.replicas)
            nodes = [self.deployment.node(r.name) for r in refs]
        elif selector.role == "controller":
            nodes = [n for n in self.deployment.nodes if n.role == "lazarus"]
            if selector.which == "coordinator":
                owner = self.controllers.workflow_owner(shard)
                nodes = [n for n in nodes if n.name == owner]
        elif selector.role == "sensor":
            # The sensors beside the shard's current replicas (after a failover, the sensor of
            # a promoted or lost replica no longer watches this shard's primary).
            # A sensor is named for the replica it watches (testbed, actuators, compose file
            # alike); ports do not tell them apart where every node listens on 6379.
            self.deployment.refresh_nodes()
            watching = {f"sensor-{r.name}" for r in topology.shard(shard).replicas}
            nodes = [
                n
                for n in self.deployment.nodes
                if n.role == "sensor" and n.shard == shard and n.name in watching
            ]
        else:
            nodes = [
                n
                for n in self.deployment.nodes
                if n.role == selector.role and (n.shard in (None, shard))
            ]
        if not nodes:
            raise TargetError(f"no {selector.role} node found for shard {shard}")
        if selector.which == "all":
            return nodes
        return [self.rng.choice(nodes) if selector.which == "random" else nodes[0]]

    def _topology(self) -> Topology:
        """The live shard map; while an earlier step keeps the store down (a killed control
        store), the last one read, said so: the nodes have not moved without the store."""
        try:
            self._last_topology = self.deployment.topology()
        except TargetError as error:
            if self._last_topology is None:
                raise
            self.say(f"targets from the last topology read: {error}")
        return self._last_topology

    def remove_leftovers(self, journal: Journal) -> None:
        """Before a run: undo what a run that died left behind: the Docker faults written down
        in the journal directory (see `chaos.faults.docker_leftovers`), named in the journal's
        `leftovers`, and the local backend's blackholes on this deployment's processes (see
        `LocalFaultBackend.remove_leftovers`), named in the journal's timeline."""
        if self.journal_dir is not None:
            from chaos.faults.docker_leftovers import undo_docker_leftovers

            journal.leftovers = undo_docker_leftovers(self.journal_dir)
            for line in journal.leftovers:
                self.say(f"leftover fault of an earlier run: {line}")
        if self.deployment.default_backend != "local" and "local" not in self._backends:
            return
        try:
            backend = self._backends.get("local") or open_backend("local")
            self._backends["local"] = backend
            undone = undo_local_leftovers(self.deployment, backend)
        except FaultError as error:
            journal.errors.append(f"removing an earlier run's leftovers failed: {error}")
            return
        if undone:
            journal.mark("leftovers_removed", time.time(), None, "; ".join(undone))
            self.say(f"removed what an earlier run left: {'; '.join(undone)}")

    def backend_name(self, step: FaultStep) -> str:
        """The step's own backend, else the deployment's default (local for the testbed)."""
        return step.backend or self.deployment.default_backend

    def inject(self, step: FaultStep, node: DeploymentNode) -> InjectedFault:
        name = self.backend_name(step)
        backend = self._backends.get(name) or open_backend(name, self.journal_dir)
        self._backends[name] = backend
        params: dict[str, Any] = {}
        if step.latency_ms is not None:
            params["latency_ms"] = step.latency_ms
        if step.from_node is not None:
            # Cut only the path from that node (e.g. one sensor) to the target.
            shard = node.shard or step.target.shard
            source = self.select(step.from_node, shard)[0]
            params["from_target"] = self.deployment.as_target(source)
        if step.action == "cpu":
            # The loops end by themselves after the step's duration, also if the run crashes.
            params["length"] = step.duration
            if step.cores is not None:
                params["cores"] = step.cores
        if step.action in {"stop", "start"} and name == "local" and node.command:
            # Stop's rollback (and start) boots the node again with its own command line.
            params["command"] = node.command
        whole = step.action == "blackhole" and step.from_node is None
        if whole and name == "local" and node.role in STORE_ROLES:
            # Clients and peers reach a store node the same way: cutting it off cuts every
            # path of its process, not a peer path it does not have.
            params["whole_node"] = True
        if step.action == "kill" and name == "local" and node.role in STORE_ROLES:
            # A killed store node comes back at rollback, from its own data directory: the
            # run is about the store's absence, not a store lost for good.
            if not node.command:
                raise TargetError(f"{node.name}: no command line to restart it at rollback")
            params["command"] = node.command
        try:
            fault = backend.inject(step.action, self.deployment.as_target(node), **params)
        except FaultError as error:
            if error.started_pid is not None:
                self._record_pid_quietly(node, error.started_pid)
            raise
        if "command" in params:
            self._record_new_pid(fault, node)
        if step.duration:
            fault.details["duration"] = step.duration  # the journal says how long it lasted
            timer = threading.Timer(step.duration, quiet_rollback, args=(fault,))
            timer.daemon = True
            timer.start()
        return fault

    def _record_new_pid(self, fault: InjectedFault, node: DeploymentNode) -> None:
        """A start, or a stop's restart, boots the node as a new process: its pid goes into the
        deployment (and testbed.json), also when the restart then fails its port wait (the
        process may still come up, and `down` must find it)."""
        if fault.action == "start":
            self._record_pid_quietly(node, fault.details["pid"])
            return
        restart = fault.undo
        if restart is None:
            return

        def restart_and_record() -> None:
            try:
                restart()
            finally:
                pid = fault.details.get("restarted", {}).get("pid")
                if pid is not None and pid != node.pid:
                    self._record_pid_quietly(node, pid)

        fault.undo = restart_and_record

    def _record_pid_quietly(self, node: DeploymentNode, pid: int) -> None:
        """Record a restarted node's pid; a failure to write it down is said, never raised, so
        it can neither mask the restart's own error nor fail a restart that worked."""
        try:
            self.deployment.record_pid(node.name, pid)
        except (OSError, ChaosError) as error:
            self.say(f"{node.name} now runs as pid {pid}, but that could not be recorded: {error}")

    def roll_back(
        self, injected: list[InjectedFault], experiment: Experiment, journal: Journal
    ) -> None:
        for fault in reversed(injected):
            try:
                fault.rollback()
            except FaultError as error:
                journal.errors.append(str(error))
        for extra in experiment.rollbacks:
            if extra.action == "resume_all":
                for fault in injected:
                    if fault.action == "pause":
                        quiet_rollback(fault)
            elif extra.action == "remove_network_faults":
                with contextlib.suppress(FaultError, ImportError):
                    from chaos.faults.local.backend import LocalFaultBackend

                    LocalFaultBackend().cleanup_all()
        if injected:
            self.on_fault(False)
            journal.faults = [f.summary() for f in injected]
            undone = [f.rolled_back_at for f in injected if f.rolled_back_at is not None]
            if undone:  # when the last fault was really undone (a timed one: by its timer)
                journal.mark("rolled_back", max(undone), journal.moment("fault_injected"))
            permanent = sum(1 for f in injected if f.undo is None)
            self.say(
                f"rolled back {len(undone)} fault(s)"
                + (f"; {permanent} cannot be undone (e.g. a kill)" if permanent else "")
            )

    def _wait_for_condition(self, when: str, choice: ShardChoice, timeout: float) -> None:
        if when == "now":
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            workflow = self.controllers.shard_workflow(choice.chosen)
            if workflow is not None and (when == "workflow_running" or waiting_gates(workflow)):
                return
            time.sleep(0.02)
        raise RunAborted(f"condition {when} not reached within {timeout:g} s")


def quiet_rollback(fault: InjectedFault) -> None:
    with contextlib.suppress(FaultError):
        fault.rollback()


def undo_local_leftovers(deployment: Deployment, backend: FaultBackend | None = None) -> list[str]:
    """Undo the local backend's cut-offs a killed run left on `deployment`'s processes; a line
    per fault undone. FaultError when the local backend cannot be opened or an undo fails."""
    pids = [n.pid for n in deployment.nodes if n.pid is not None]
    local = backend or open_backend("local")
    return local.remove_leftovers(pids)  # type: ignore[attr-defined]


def undo_local_cut_offs(deployment: Deployment) -> tuple[list[str], str | None]:
    """For `chaos halt --target`: undo the local backend's cut-offs on `deployment`'s
    processes, unless one may still be in use: the lines of those undone, and why some were
    left (None: none was). Local faults are made by processes on this host, so while a chaos
    command that may hold one runs here (`live_fault_makers`), none is touched."""
    from chaos.faults.local.backend import LocalFaultBackend
    from chaos.processes import live_fault_makers

    backend = LocalFaultBackend()
    pids = [n.pid for n in deployment.nodes if n.pid is not None]
    if not backend.cut_offs_holding(pids):
        return [], None
    if makers := live_fault_makers():
        return [], f"chaos commands still run on this host and may own them ({'; '.join(makers)})"
    try:
        return backend.remove_leftovers(pids), None
    except FaultError as error:
        return [], f"undoing them failed: {error}"
