"""The experiment runner: steady state → load → method (faults) → watch the recovery → rollbacks
→ drain → hypotheses → journal. Rollbacks always run, also after an error, a halt or Ctrl-C.

It reads top to bottom like the run it performs: `run()` is the whole story, the methods below
it are its steps; its collaborators do the parts: `steady_state` probes, `fault_phase` injects
and rolls back, `controller_answers` reads what the controllers did, `recovery_watch` places it
on the timeline, `halting` stops a run early. Not for: scheduling (see `scheduler`) or the
faults' mechanics (see `chaos.faults`).
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
from redis.backoff import NoBackoff
from redis.retry import Retry

from chaos.controller_answers import ControllerAnswers, decision_summary
from chaos.errors import RunAborted, TargetError
from chaos.experiments import Experiment, FaultStep
from chaos.fault_phase import FaultPhase
from chaos.faults.base import FaultBackend, InjectedFault
from chaos.halting import sleep_until
from chaos.hypotheses import Observations, comparable_measures, evaluate, verdict_ok
from chaos.journal import Journal, Say
from chaos.ledger import Ledger, describe_failed_calls
from chaos.load import BackgroundLoad, LoadProfile
from chaos.recovery_watch import (
    RECOVERED_BY,
    mark_sentinel_switch,
    mark_write_after_switch,
    outcome_reached,
    update_timeline,
)
from chaos.sentinel_switch_marks import SentinelAnnouncements
from chaos.steady_state import SteadyStateProbes, primaries_answering
from chaos.store_members import STORE_NODE_ROLES
from chaos.targets import Deployment, ShardChoice
from chaos.undelivered_whereabouts import find_undelivered
from ratequeue.sentinel_topology import parse_sentinel_addresses
from ratequeue.topology import EPOCH_TAKEN_AT_HEADER, Topology

# The most ids a journal lists of those lost or delivered from elsewhere (a bound on its size).
LISTED_IDS = 10_000


def store_back_at(faults: list[dict[str, Any]]) -> float | None:
    """When the first fault on a coordination store node (journal fault summaries) was undone."""
    undone = [
        f["rolled_back_at"]
        for f in faults
        if f.get("role") in STORE_NODE_ROLES and f.get("rolled_back_at") is not None
    ]
    return min(undone, default=None)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def sentinel_timers(addresses: list[tuple[str, int]], master: str) -> dict[str, int] | None:
    """Sentinel's down-after and failover-timeout for `master`, from the first sentinel that
    answers (None if none does): a comparison names the timers Sentinel ran with. Each sentinel
    is asked once with short timeouts (no retry with backoff): a paused one costs 0.5 s."""
    for host, port in addresses:
        with (
            contextlib.suppress(redis.RedisError, OSError),
            redis.Redis(
                host,
                port,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
            ) as conn,  # fmt: skip
        ):
            view = conn.sentinel_master(master)
            return {"down_after_ms": int(view["down-after-milliseconds"]),
                    "failover_timeout_ms": int(view["failover-timeout"])}  # fmt: skip
    return None


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
        on_fault: Callable[[bool], None] = lambda active: None,
    ) -> None:
        """`on_fault(True)` as a fault is injected, `on_fault(False)` once all are rolled back."""
        self.deployment = deployment
        self.journal_dir = journal_dir
        self.say = say
        self.stop = stop or threading.Event()
        self.rng = random.Random(seed)
        self._http = httpx.Client(timeout=5)
        self.controllers = ControllerAnswers(deployment, self._http, say)
        self.probes = SteadyStateProbes(deployment, self._http, self.stop, say)
        self.faults = FaultPhase(
            deployment,
            self.controllers,
            rng=self.rng,
            stop=self.stop,
            say=say,
            backends=backends,
            on_fault=on_fault,
            journal_dir=journal_dir,
        )
        self._topology_before: Topology | None = None
        # Under Sentinel: its announcements, heard from before the fault to the run's end.
        self._announcements: SentinelAnnouncements | None = None

    # -- the run ---------------------------------------------------------------------------
    def run(self, experiment: Experiment, source: str | None = None) -> Journal:
        journal = self._new_journal(experiment, source)
        injected: list[InjectedFault] = []
        faulted: set[str] = set()
        load: BackgroundLoad | None = None
        try:
            self.faults.remove_leftovers(journal)
            before = self._topology_before = self.deployment.topology()
            shard_ids = [s.id for s in before.shards]
            # Before any load or fault: a step naming a shard the deployment lacks, or whose
            # backend cannot reach its nodes, would fail half-way, with the load running and
            # earlier faults in.
            unknown = experiment.unknown_shards(shard_ids)
            unknown += self.deployment.unusable_backends(experiment)
            if unknown:
                raise RunAborted("; ".join(unknown) + "; nothing was touched")
            named = next((f.target.shard for f in experiment.faults
                          if f.target.shard in shard_ids), None)  # fmt: skip
            choice = ShardChoice(shard_ids, self.rng, named)
            self._plan_into(journal, experiment, choice)
            if self.deployment.failover == "sentinel":
                addresses = parse_sentinel_addresses(",".join(self.deployment.sentinels))
                self._announcements = SentinelAnnouncements(addresses).start()
                journal.sentinel_timers = sentinel_timers(addresses, shard_ids[0])
            journal.steady_state_before = self.probes.check(experiment.steady_state)
            if not all(p.ok or p.skipped for p in journal.steady_state_before):
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

            self.faults.perform(experiment, choice, load_started, injected, faulted, journal)
            fault_at = journal.moment("fault_injected") or load_started
            self.watch(experiment, journal, load, faulted, fault_at)
            sleep_until(self.stop, load_started + experiment.load.duration)
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
            self.faults.roll_back(injected, experiment, journal)
            if load is not None:
                ledger = self._drain(load, journal)
                if journal.status == "running":
                    self.conclude(
                        experiment,
                        journal,
                        ledger,
                        faulted or ({journal.shard} if journal.shard else set()),
                    )
            journal.errors.extend(sorted(self.controllers.unreadable))
            journal.ended_at = time.time()
            journal.measure_from_fault()
            if journal.status == "running":
                journal.status = "completed"
            journal.write(self.journal_dir)
            self._http.close()
            if self._announcements is not None:
                self._announcements.close()
                self._announcements = None
        return journal

    def dry_run(
        self, experiment: Experiment, source: str | None = None, shard_ids: list[str] | None = None
    ) -> Journal:
        """The plan and nothing else: no lock, load, fault or rollback, and no journal file (a
        plan did not happen). The shards come from the live topology, read only, or are
        `shard_ids` (a testbed the dry run does not start). An unreachable control store
        raises TargetError naming it, and so does a step naming a shard not among them."""
        journal = self._new_journal(experiment, source, dry_run=True)
        try:
            if shard_ids is None:
                shard_ids = [s.id for s in self.deployment.topology().shards]
        finally:
            self._http.close()
        unknown = experiment.unknown_shards(shard_ids)
        unknown += self.deployment.unusable_backends(experiment)
        if unknown:
            raise TargetError("; ".join(unknown))
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
            failover=self.deployment.failover,
            ack=self.deployment.ack,
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
                shard = choice.shard_of(step.target)
                lines.append(
                    f"t+{step.at:g}s {step.action} {step.target.role} of {shard} via "
                    f"{self.faults.backend_name(step)}"
                    + (f" for {step.duration:g}s" if step.duration else "")
                    + (f" when {step.when}" if step.when != "now" else "")
                )
            else:
                lines.append(f"approve gate '{step.approve}' when {step.when}")
        lines.append("hypotheses: " + ", ".join(h.type for h in experiment.hypotheses))
        return lines

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
            decisions, workflows = self.controllers.decisions(fault_at, faulted)
            watched = self.faults.primary_faulted or faulted
            update_timeline(journal, load, decisions, workflows, watched, fault_at)
            failover = self.deployment.failover
            if failover == "sentinel" and self._topology_before is not None:
                before = self._topology_before
                with contextlib.suppress(TargetError):  # Sentinel unreachable: look again
                    now = self.deployment.topology()
                    mark_sentinel_switch(journal, before, now, watched, fault_at,
                                         announcements=self._announcements)  # fmt: skip
                # The API's switch only once the promotion is placed: the API's clock is
                # trusted only after it (mark_sentinel_switch).
                if journal.moment("promotion") is not None:
                    with contextlib.suppress(httpx.HTTPError, ValueError):  # look again
                        routed = self._http.get(f"{self.deployment.api}/v1/topology")
                        api = Topology.model_validate(routed.raise_for_status().json())
                        taken = routed.headers.get(EPOCH_TAKEN_AT_HEADER)  # an older API: none
                        mark_sentinel_switch(journal, before, api, watched, fault_at,
                                             "topology_published",
                                             taken_at=float(taken) if taken else None)  # fmt: skip
            if outcome_reached(experiment.expect, journal, decisions, workflows, faulted, failover):
                return
            time.sleep(0.1)
        if self.stop.is_set():
            raise RunAborted("halted")

    def conclude(
        self, experiment: Experiment, journal: Journal, ledger: Ledger, faulted: set[str]
    ) -> None:
        fault_at = journal.moment("fault_injected") or journal.started_at
        decisions, workflows = self.controllers.decisions(fault_at, faulted)
        journal.decisions = [decision_summary(d) for d in decisions]
        after = self.deployment.topology()
        if self.deployment.failover == "sentinel":
            watched = self.faults.primary_faulted or faulted
            mark_write_after_switch(journal, ledger, watched, fault_at)
        observations = Observations(
            ledger=ledger,
            shard=journal.shard or "",
            faulted_shards=faulted,
            fault_at=fault_at,
            recovered_at=journal.moment(journal.recovery_mark),
            recovered_by=RECOVERED_BY[journal.recovery_mark],
            topology_before=self._topology_before or after,
            topology_after=after,
            primaries_answering=primaries_answering(after),
            decisions=decisions,
            workflows=workflows,
            fault_ended_at=journal.moment("rolled_back"),
            store_back_at=store_back_at(journal.faults),
        )
        journal.steady_state_after = self.probes.check(
            [p for p in experiment.steady_state if p.after]
        )
        journal.hypotheses = evaluate(experiment.hypotheses, observations, self.deployment.failover)
        journal.measures = comparable_measures(observations)
        ok = verdict_ok(journal.hypotheses) and all(
            p.ok or p.skipped for p in journal.steady_state_after
        )
        journal.verdict = "passed" if ok else "failed"
        for outcome in journal.hypotheses:
            if outcome.skipped:
                self.say(f"hypothesis {outcome.hypothesis}: SKIPPED ({outcome.skipped})")
                continue
            self.say(
                f"hypothesis {outcome.hypothesis}: {'ok' if outcome.ok else 'FAILED'} "
                f"(measured {outcome.measured}, expected {outcome.expected})"
            )

    def _drain(self, load: BackgroundLoad, journal: Journal) -> Ledger:
        self.say("draining: waiting for every acknowledged message to be delivered")
        ledger = load.join()
        journal.mark("load_drained", time.time(), journal.moment("fault_injected"))
        since = journal.moment("fault_injected") or journal.moment("load_started") or 0.0
        journal.load = {
            "acknowledged": len(ledger.acknowledged),
            "delivered": len(ledger.delivered_ids),
            "lost": len(ledger.lost()),
            "duplicates": ledger.duplicates(),
            "attempts": len(ledger.attempts),
            # Which ids, so a later run's foreign deliveries can be matched to them (a message
            # delivered after its run's drain is late, not lost: see chaos.soak_deliveries).
            "lost_ids": sorted(ledger.lost())[:LISTED_IDS],
            "foreign_ids": sorted(ledger.foreign_ids())[:LISTED_IDS],
            "unanswered_enqueues": ledger.unanswered_enqueues,
            "failed_dequeues": ledger.failed_dequeues,
            # How they failed and when (from the fault): a refusal by the API (status and error
            # code) reads apart from a dequeue that never got an answer (transport error).
            "dequeue_failures": describe_failed_calls(ledger.dequeue_failures, since),
            "ack_failures": describe_failed_calls(ledger.ack_failures, since),
            "slowest_dequeue_seconds": round(ledger.slowest_dequeue, 3),
            "availability": {
                s: ledger.availability(s) for s in sorted({a.shard for a in ledger.attempts})
            },
        }
        if ledger.lost():
            whereabouts = self._undelivered_whereabouts(ledger)
            journal.load["undelivered_whereabouts"] = whereabouts
            self.say(f"undelivered: {len(ledger.lost())}; at the end {whereabouts['described']}")
        return ledger

    def _undelivered_whereabouts(self, ledger: Ledger) -> dict:
        """Where the acknowledged writes not delivered are now: still held by a node of their
        shard (a shard left without a primary), or gone (`chaos.undelivered_whereabouts`)."""
        topologies = [t for t in [self._topology_before] if t is not None]
        # The store away: the map before the fault lists the nodes.
        with contextlib.suppress(TargetError):
            topologies.append(self.deployment.topology())
        undelivered = {i: ledger.acknowledged[i][:2] for i in sorted(ledger.lost())[:LISTED_IDS]}
        found = find_undelivered(undelivered, topologies)
        return {**found.model_dump(), "looked_for": len(undelivered), "described": found.describe()}
