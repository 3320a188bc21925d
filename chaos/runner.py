"""The experiment runner: steady state → load → method (faults) → watch the recovery → rollbacks
→ drain → hypotheses → journal. Rollbacks always run, also after an error, a halt or Ctrl-C.

It reads top to bottom like the run it performs: `run()` is the whole story, the helpers below
it are its steps. Not for: scheduling (see `scheduler`) or the faults' mechanics (see
`chaos.faults`).
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from chaos.experiments import ApproveStep, Experiment, FaultStep, Probe, Selector
from chaos.faults.base import FaultBackend, FaultError, InjectedFault
from chaos.hypotheses import Observations, evaluate
from chaos.journal import Journal, ProbeOutcome
from chaos.load import BackgroundLoad, LoadProfile
from chaos.targets import Deployment, DeploymentNode, ShardChoice, TargetError
from ratequeue.topology import Topology

Say = Callable[[str], None]


class RunAborted(Exception):
    """The run stopped before its end (steady state not met, halted, or interrupted)."""


def open_backend(name: str) -> FaultBackend:
    if name == "local":
        from chaos.faults.local.backend import LocalFaultBackend

        return LocalFaultBackend()
    if name == "docker":
        from chaos.faults.docker import DockerFaultBackend

        return DockerFaultBackend()
    if name == "gremlin":
        from chaos.faults.gremlin import GremlinFaultBackend

        return GremlinFaultBackend.from_env()
    raise FaultError(f"unknown fault backend {name!r}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


class ExperimentRunner:
    def __init__(
        self,
        deployment: Deployment,
        *,
        journal_dir: Path,
        say: Say = lambda _: None,
        stop: threading.Event | None = None,
        seed: int | None = None,
        backends: dict[str, FaultBackend] | None = None,
    ) -> None:
        self.deployment = deployment
        self.journal_dir = journal_dir
        self.say = say
        self.stop = stop or threading.Event()
        self.rng = random.Random(seed)
        self._backends = dict(backends or {})
        self._http = httpx.Client(timeout=5)
        self.primary_faulted: set[str] = set()
        self._topology_before: Topology | None = None

    # -- the run ---------------------------------------------------------------------------
    def run(self, experiment: Experiment, source: str | None = None) -> Journal:
        journal = self._new_journal(experiment, source)
        injected: list[InjectedFault] = []
        faulted: set[str] = set()
        load: BackgroundLoad | None = None
        try:
            before = self._topology_before = self.deployment.topology()
            choice = ShardChoice([s.id for s in before.shards], self.rng)
            self._plan_into(journal, experiment, choice)
            journal.steady_state_before = self.check_steady_state(experiment.steady_state)
            if not all(p.ok for p in journal.steady_state_before):
                raise RunAborted("steady state not met before the fault; nothing was touched")

            profile = LoadProfile(
                **experiment.load.model_dump(exclude={"duration", "drain_seconds"})
            )
            load = BackgroundLoad(
                self.deployment.api, profile, drain_timeout=experiment.load.drain_seconds
            ).start()
            load_started = time.time()
            journal.mark("load_started", load_started, None)
            self.say(f"load: {profile.enqueue_per_second:g} msg/s over {profile.numbers} numbers")

            self.perform_method(experiment, choice, load_started, injected, faulted, journal)
            fault_at = journal.moment("fault_injected") or load_started
            self.watch(experiment, journal, load, faulted, fault_at)
            self._sleep_until(load_started + experiment.load.duration)
            load.stop_producing()
        except RunAborted as stopped:
            journal.status, journal.verdict = "aborted", "aborted"
            journal.errors.append(str(stopped))
            self.say(f"aborted: {stopped}")
        except (KeyboardInterrupt, InterruptedError):
            journal.status, journal.verdict = "interrupted", "aborted"
            journal.errors.append("interrupted; rolled back")
        except Exception as error:  # whatever went wrong, the run did not complete
            journal.status, journal.verdict = "error", "failed"
            journal.errors.append(f"{type(error).__name__}: {error}")
            self.say(f"error: {type(error).__name__}: {error}")
        finally:
            self.roll_back(injected, experiment, journal)
            if load is not None:
                ledger = self._drain(load, journal)
                if journal.status == "running":
                    self.conclude(
                        experiment,
                        journal,
                        ledger,
                        faulted or ({journal.shard} if journal.shard else set()),
                    )
            journal.ended_at = time.time()
            journal.measure_from_fault()
            if journal.status == "running":
                journal.status = "completed"
            journal.write(self.journal_dir)
            self._http.close()
        return journal

    def dry_run(
        self, experiment: Experiment, source: str | None = None, shard_ids: list[str] | None = None
    ) -> Journal:
        """The plan and nothing else: no lock, load, fault or rollback, and no journal file (a
        plan did not happen). The shards come from the live topology, read only, or are
        `shard_ids` (a testbed the dry run does not start). An unreachable control store
        raises TargetError naming it."""
        journal = self._new_journal(experiment, source, dry_run=True)
        try:
            if shard_ids is None:
                shard_ids = [s.id for s in self.deployment.topology().shards]
        finally:
            self._http.close()
        self._plan_into(journal, experiment, ShardChoice(shard_ids, self.rng))
        journal.status = "completed"
        journal.ended_at = time.time()
        return journal

    def _new_journal(
        self, experiment: Experiment, source: str | None, *, dry_run: bool = False
    ) -> Journal:
        started = time.time()
        return Journal(
            run_id=f"{datetime.fromtimestamp(started):%Y%m%dT%H%M%S}-{slug(experiment.title)}",
            experiment=experiment.title,
            experiment_file=source,
            deployment=self.deployment.name,
            environment=self.deployment.environment,
            started_at=started,
            dry_run=dry_run,
        )

    # -- steps -----------------------------------------------------------------------------
    def _plan_into(self, journal: Journal, experiment: Experiment, choice: ShardChoice) -> None:
        journal.shard = choice.chosen
        journal.plan = self.plan(experiment, choice)
        for line in journal.plan:
            self.say(f"plan: {line}")

    def plan(self, experiment: Experiment, choice: ShardChoice) -> list[str]:
        lines = [
            f"deployment {self.deployment.name} ({self.deployment.environment}); "
            f"shard {choice.chosen}"
        ]
        for step in sorted(experiment.method, key=lambda s: s.at):
            if isinstance(step, FaultStep):
                shard = choice.resolve(step.target.shard)
                lines.append(
                    f"t+{step.at:g}s {step.action} {step.target.role} of {shard} via "
                    f"{self.backend_name(step)}"
                    + (f" for {step.duration:g}s" if step.duration else "")
                    + (f" when {step.when}" if step.when != "now" else "")
                )
            else:
                lines.append(f"approve gate '{step.approve}' when {step.when}")
        lines.append("hypotheses: " + ", ".join(h.type for h in experiment.hypotheses))
        return lines

    def check_steady_state(self, probes: list[Probe]) -> list[ProbeOutcome]:
        outcomes = []
        for probe in probes:
            deadline = time.monotonic() + probe.timeout
            while True:
                ok, detail = self._probe(probe.probe)
                if ok or time.monotonic() > deadline or self.stop.is_set():
                    break
                time.sleep(0.2)
            outcomes.append(ProbeOutcome(probe=probe.probe, ok=ok, detail=detail))
            self.say(f"steady state: {probe.probe}: {'ok' if ok else 'FAILED'} ({detail})")
        return outcomes

    def _probe(self, name: str) -> tuple[bool, str]:
        try:
            if name == "api_healthy":
                answer = self._http.get(f"{self.deployment.api}/healthz")
                failing = [c["name"] for c in answer.json().get("checks", []) if not c["ok"]]
                return answer.status_code == 200 and not failing, (
                    f"failing checks: {failing}" if failing else "all checks pass"
                )
            if name == "controllers_healthy":
                urls = self.deployment.controller_urls()
                healthy = [u for u in urls if self._http.get(f"{u}/healthz").status_code == 200]
                return len(healthy) == len(urls) and bool(urls), f"{len(healthy)}/{len(urls)}"
            if name == "every_shard_writable":
                return self._every_shard_writable()
            if name == "one_primary_per_shard":
                counts = primaries_answering(self.deployment.topology())
                wrong = {s: n for s, n in counts.items() if len(n) != 1}
                return not wrong, f"unexpected: {wrong}" if wrong else "one each"
        except (httpx.HTTPError, redis.RedisError, ValueError, TargetError) as error:
            return False, str(error)
        return False, f"unknown probe {name}"

    def _every_shard_writable(self) -> tuple[bool, str]:
        topology = self.deployment.topology()
        from chaos.load import number_pool
        from ratequeue.slots import slot_for

        numbers = number_pool(LoadProfile(numbers=500))
        missing = []
        for shard in topology.shards:
            number = next(n for n in numbers if topology.shard_for_slot(slot_for(n)) == shard)
            answer = self._http.post(
                f"{self.deployment.api}/v1/numbers/{number}/messages",
                json={"id": f"probe-{time.time_ns()}", "body": {"text": "steady-state probe"}},
            )
            if answer.status_code != 201:
                missing.append(f"{shard.id}: {answer.status_code}")
        return not missing, f"refused: {missing}" if missing else "every shard acknowledged"

    def perform_method(
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
        for step in sorted(experiment.method, key=lambda s: s.at):
            self._sleep_until(load_started + step.at)
            self._wait_for_condition(step.when, choice, timeout=experiment.watch_seconds)
            if isinstance(step, ApproveStep):
                self.approve(step, choice)
                continue
            shard = choice.resolve(step.target.shard)
            for node in self.select(step.target, shard):
                fault = self.inject(step, node)
                injected.append(fault)
                if node.role in {"primary", "replica"}:
                    faulted.add(shard)
                if node.role == "primary" and step.action in {"kill", "pause", "stop", "blackhole"}:
                    self.primary_faulted.add(shard)
                journal.faults.append(fault.summary())
                journal.mark(
                    "fault_injected",
                    fault.injected_at,
                    fault.injected_at,
                    f"{step.action} {node.name} via {self.backend_name(step)}",
                )
                self.say(f"fault: {step.action} {node.name} ({self.backend_name(step)})")

    def select(self, selector: Selector, shard: str) -> list[DeploymentNode]:
        topology = self.deployment.topology()
        if selector.role in {"primary", "replica"}:
            entry = topology.shard(shard)
            refs = [entry.primary] if selector.role == "primary" else list(entry.replicas)
            nodes = [self.deployment.node(r.name) for r in refs]
        elif selector.role == "controller":
            nodes = [n for n in self.deployment.nodes if n.role == "lazarus"]
            if selector.which == "coordinator":
                owner = self._workflow_owner(shard)
                nodes = [n for n in nodes if n.name == owner]
        elif selector.role == "sensor":
            # The sensors beside the shard's current replicas (after a failover, the sensor of
            # a promoted or lost replica no longer watches this shard's primary).
            self.deployment.refresh_nodes()
            watching = {r.port for r in topology.shard(shard).replicas}
            nodes = [
                n
                for n in self.deployment.nodes
                if n.role == "sensor" and n.shard == shard and n.port in watching
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

    def backend_name(self, step: FaultStep) -> str:
        """The step's own backend, else the deployment's default (local for the testbed)."""
        return step.backend or self.deployment.default_backend

    def inject(self, step: FaultStep, node: DeploymentNode) -> InjectedFault:
        name = self.backend_name(step)
        backend = self._backends.get(name) or open_backend(name)
        self._backends[name] = backend
        params: dict[str, Any] = {}
        if step.latency_ms is not None:
            params["latency_ms"] = step.latency_ms
        if step.from_node is not None:
            # Cut only the path from that node (e.g. one sensor) to the target.
            shard = node.shard or step.target.shard
            source = self.select(step.from_node, shard)[0]
            params["from_target"] = self.deployment.as_target(source)
        fault = backend.inject(step.action, self.deployment.as_target(node), **params)
        if step.duration:
            timer = threading.Timer(step.duration, _quiet_rollback, args=(fault,))
            timer.daemon = True
            timer.start()
        return fault

    def approve(self, step: ApproveStep, choice: ShardChoice) -> None:
        workflow = self._shard_workflow(choice.chosen)
        if workflow is None:
            raise TargetError("no workflow to approve")
        token = self.deployment.lazarus_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answers = []
        for url in self.deployment.controller_urls():
            try:
                answer = self._http.post(
                    f"{url}/v1/workflows/{workflow['id']}/approve",
                    json={"step": step.approve},
                    headers=headers,
                )
            except httpx.HTTPError as error:
                answers.append(f"{url}: {type(error).__name__}")
                continue
            if answer.status_code == 200:
                self.say(f"approved gate '{step.approve}' of {workflow['id']} via {url}")
                return
            answers.append(f"{url}: {answer.status_code} {answer.text[:200]}")
        raise TargetError(f"no controller accepted the approval of {workflow['id']}: {answers}")

    def watch(
        self,
        experiment: Experiment,
        journal: Journal,
        load: BackgroundLoad,
        faulted: set[str],
        fault_at: float,
    ) -> None:
        """Follow the recovery on the timeline until the expected outcome or `watch_seconds`."""
        deadline = time.monotonic() + experiment.watch_seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            decisions, workflows = self.read_decisions(fault_at, faulted)
            self._update_timeline(journal, load, decisions, workflows, faulted, fault_at)
            if self._outcome_reached(experiment.expect, journal, decisions, workflows, faulted):
                return
            time.sleep(0.1)
        if self.stop.is_set():
            raise RunAborted("halted")

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
                        _quiet_rollback(fault)
            elif extra.action == "remove_network_faults":
                with contextlib.suppress(FaultError, ImportError):
                    from chaos.faults.local.backend import LocalFaultBackend

                    LocalFaultBackend().cleanup_all()
        if injected:
            journal.faults = [f.summary() for f in injected]
            undone = [f.rolled_back_at for f in injected if f.rolled_back_at is not None]
            if undone:  # when the last fault was really undone (a timed one: by its timer)
                journal.mark("rolled_back", max(undone), journal.moment("fault_injected"))
            permanent = sum(1 for f in injected if f.undo is None)
            self.say(
                f"rolled back {len(undone)} fault(s)"
                + (f"; {permanent} cannot be undone (e.g. a kill)" if permanent else "")
            )

    def conclude(
        self, experiment: Experiment, journal: Journal, ledger: Any, faulted: set[str]
    ) -> None:
        fault_at = journal.moment("fault_injected") or journal.started_at
        decisions, workflows = self.read_decisions(fault_at, faulted)
        journal.decisions = [_decision_summary(d) for d in decisions]
        after = self.deployment.topology()
        observations = Observations(
            ledger=ledger,
            shard=journal.shard or "",
            faulted_shards=faulted,
            fault_at=fault_at,
            recovered_at=journal.moment("first_acknowledged_write"),
            topology_before=self._topology_before or after,
            topology_after=after,
            primaries_answering=primaries_answering(after),
            decisions=decisions,
            workflows=workflows,
        )
        journal.steady_state_after = self.check_steady_state(
            [p for p in experiment.steady_state if p.after]
        )
        journal.hypotheses = evaluate(experiment.hypotheses, observations)
        ok = all(h.ok for h in journal.hypotheses) and all(p.ok for p in journal.steady_state_after)
        journal.verdict = "passed" if ok else "failed"
        for outcome in journal.hypotheses:
            self.say(
                f"hypothesis {outcome.hypothesis}: {'ok' if outcome.ok else 'FAILED'} "
                f"(measured {outcome.measured}, expected {outcome.expected})"
            )

    # -- observation helpers ---------------------------------------------------------------
    def read_decisions(self, since: float, shards: set[str]) -> tuple[list[dict], list[dict]]:
        """Audit records about the faulted shards since the fault, and their workflows."""
        for url in self.deployment.controller_urls():
            try:
                events = self._http.get(
                    f"{url}/v1/events", params={"since": since - 2, "limit": 500}
                ).json()["events"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            mine = [e for e in events if e["event"].get("shard") in shards]
            workflows = []
            for record in mine:
                if record.get("workflow_id"):
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        workflows.append(
                            self._http.get(f"{url}/v1/workflows/{record['workflow_id']}").json()
                        )
            return sorted(mine, key=lambda e: e["received_at"]), workflows
        return [], []

    def _update_timeline(
        self,
        journal: Journal,
        load: BackgroundLoad,
        decisions: list[dict],
        workflows: list[dict],
        faulted: set[str],
        fault_at: float,
    ) -> None:
        downs = [d for d in decisions if d["event"]["type"] == "RedisMasterDown"]
        if downs:
            first = min(
                datetime.fromisoformat(d["event"]["occurred_at"]).timestamp() for d in downs
            )
            journal.mark("first_sensor_event", first, fault_at, downs[0]["event"]["source"])
        final = [d for d in decisions if d["outcome"] not in ("received", "duplicate")]
        if final and final[0].get("decided_at"):
            journal.mark(
                "decision",
                final[0]["decided_at"],
                fault_at,
                f"{final[0]['outcome']}: {final[0]['reason']}",
            )
        for workflow in workflows:
            steps = workflow["steps"]
            for step, name in (
                ("promote_candidate", "promotion"),
                ("publish_topology", "topology_published"),
            ):
                if steps.get(step, {}).get("finished_at"):
                    journal.mark(
                        name,
                        steps[step]["finished_at"],
                        fault_at,
                        str(steps[step].get("output", {}).get("primary", "")),
                    )
        # Recovered: every shard whose primary was hit has acknowledged a write again (the
        # slowest one counts; a shard that only lost a replica never stopped).
        shards = self.primary_faulted or faulted
        acks = {shard: load.ledger.first_ack_after(fault_at, shard) for shard in sorted(shards)}
        if acks and all(at is not None for at in acks.values()):
            slowest = max(acks, key=lambda shard: acks[shard] or 0.0)
            journal.mark("first_acknowledged_write", acks[slowest], fault_at, slowest)

    def _outcome_reached(
        self,
        expect: str,
        journal: Journal,
        decisions: list[dict],
        workflows: list[dict],
        faulted: set[str],
    ) -> bool:
        if expect == "remediation":
            done = [w for w in workflows if w["status"] != "running"]
            return bool(done) and journal.moment("first_acknowledged_write") is not None
        if expect == "escalation":
            final = {
                d["event"].get("shard")
                for d in decisions
                if d["outcome"] not in ("received", "duplicate")
            }
            return faulted <= final
        return False  # "nothing": watch the whole time

    def _workflow_owner(self, shard: str) -> str | None:
        workflow = self._shard_workflow(shard)
        if workflow is None:
            return None
        with redis.Redis.from_url(self.deployment.control, socket_timeout=3) as conn:
            owner = conn.get(f"lz:wf:{workflow['id']}:owner")
        return owner.decode() if owner else None

    def _shard_workflow(self, shard: str) -> dict | None:
        _, workflows = self.read_decisions(time.time() - 600, {shard})
        running = [w for w in workflows if w["status"] == "running"]
        return running[-1] if running else None

    def _wait_for_condition(self, when: str, choice: ShardChoice, timeout: float) -> None:
        if when == "now":
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            workflow = self._shard_workflow(choice.chosen)
            if workflow is not None:
                if when == "workflow_running":
                    return
                gates = [
                    name
                    for name, s in workflow["steps"].items()
                    if s["status"] == "running" and _is_gate(workflow, name)
                ]
                if gates:
                    return
            time.sleep(0.02)
        raise RunAborted(f"condition {when} not reached within {timeout:g} s")

    def _sleep_until(self, moment: float) -> None:
        while time.time() < moment:
            if self.stop.wait(timeout=min(0.1, max(0.0, moment - time.time()))):
                raise RunAborted("halted")

    def _drain(self, load: BackgroundLoad, journal: Journal) -> Any:
        self.say("draining: waiting for every acknowledged message to be delivered")
        ledger = load.join()
        journal.mark("load_drained", time.time(), journal.moment("fault_injected"))
        journal.load = {
            "acknowledged": len(ledger.acknowledged),
            "delivered": len(ledger.delivered_ids),
            "lost": len(ledger.lost()),
            "duplicates": ledger.duplicates(),
            "attempts": len(ledger.attempts),
            "availability": {
                s: ledger.availability(s) for s in sorted({a.shard for a in ledger.attempts})
            },
        }
        return ledger


def _is_gate(workflow: dict, step_name: str) -> bool:
    for step in workflow["definition"]["steps"]:
        if step["name"] == step_name:
            return step["run"] == "approval.wait"
    return False


def _quiet_rollback(fault: InjectedFault) -> None:
    with contextlib.suppress(FaultError):
        fault.rollback()


def _decision_summary(record: dict) -> dict:
    return {
        key: record.get(key)
        for key in (
            "event_id",
            "coordinator",
            "outcome",
            "reason",
            "rule",
            "workflow_id",
            "received_at",
            "decided_at",
            "quorum",
        )
    } | {
        "shard": record["event"].get("shard"),
        "type": record["event"]["type"],
        "source": record["event"]["source"],
    }


def primaries_answering(topology: Topology) -> dict[str, list[str]]:
    """Per shard, the nodes (primary, replicas, held former primaries) answering as masters."""
    answer = {}
    for shard in topology.shards:
        masters = []
        for node in [shard.primary, *shard.replicas, *shard.forensics]:
            try:
                with redis.Redis(
                    host=node.host, port=node.port, socket_timeout=1, socket_connect_timeout=1
                ) as conn:
                    if conn.info("replication")["role"] == "master":
                        masters.append(node.name)
            except (redis.RedisError, OSError):
                continue
        answer[shard.id] = masters
    return answer
