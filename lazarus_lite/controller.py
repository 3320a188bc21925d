"""A Lazarus-lite controller node: where an event is decided. `ControllerNode.handle` reads top
to bottom as the decision is made: an event comes in → one incident, one decision (`incidents`)
→ a rule matches (`rules`) → the safety gates allow acting (`gates`) → the quorum of nodes
passed the rule's precondition checks (`quorum`, `checks`) → shadow mode aside, the rule's
workflow is scheduled (`workflow`), or the event is escalated to a person. Each decision is
written to the audit trail and escalations reach people (`decisions`, through the pager policy
of `paging`). The node's background loops (`background`) take events from the stream, resume
orphaned workflows, run the shard keeper and write the escalations held while the store was
unreachable; the shard watch runs beside them (and, without the store, escalates instead of
acting: no lock, no action). A report of the watch that the stream does not take is decided
here all the same (`decide_own_report`), and records wait in memory while the record log is
away (`held_records`): on etcd neither the stream's Redis nor the log's stops a failover.

The node that takes an event coordinates it: it evaluates the checks itself, asks its peers to
evaluate them on their own, and needs `quorum` nodes whose every check passed. Anything less,
or no matching rule, escalates without acting. Not for: HTTP (see `service`) or the steps (see
`steps.ratequeue_promotion`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from common.validation import quoted
from detection.events import Event
from detection.streams import EventStream
from lazarus_lite import background
from lazarus_lite import steps as _registers_the_steps  # noqa: F401
from lazarus_lite.actuators import Actuator, LocalProcessActuator
from lazarus_lite.audit import AuditLog, AuditRecord, NodeVerdict
from lazarus_lite.checks import CHECKS
from lazarus_lite.coordination.interface import CoordinationStore, StepReads
from lazarus_lite.decisions import Decisions
from lazarus_lite.docker_actuator import DockerActuator, DockerActuatorSettings
from lazarus_lite.errors import DecisionPending, Escalate, EventIdReused, WorkflowCancelled
from lazarus_lite.gates import GateStop, SafetyGates, is_failure
from lazarus_lite.held_records import DIRECT_WRITE_TIMEOUT, HeldRecordLog
from lazarus_lite.incidents import IncidentClaims
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.profiles import load_profiles
from lazarus_lite.quorum import Quorum
from lazarus_lite.rules import Rule, RuleBook, load_rules
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.shadow_report import remember_shadow_decision
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.shard_watch import WATCH_EVENT_TYPES, ShardWatch, WatchSettings, watch_forever
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import load_workflows
from lazarus_lite.workflow.records import WorkflowRecord
from notifications.config import load_notification_config

log = logging.getLogger(__name__)

RECORD_ONLY_ACTION = "default.record"
# A report that waited this long for an earlier report's decision says so in its record.
CLAIM_WAIT_NOTED = 0.05
# How long a stopping node tries to write the records held while the record log was away.
STOP_WRITE_TIMEOUT = 2.0


def lock_resource(rule: Rule, event: Event) -> str:
    if rule.lock == "shard":
        return f"{event.service}/{event.shard}"
    if rule.lock == "service":
        return event.service
    return event.host


def chosen_actuator(settings: ControllerSettings) -> Actuator | None:
    """The actuator the settings select; None: failovers run one replica short."""
    # Either engine's sensors read the topology where the controllers keep it.
    sensors_etcd = settings.etcd_endpoints if settings.coordination_backend == "etcd" else None
    match settings.chosen_actuator:
        case "local":
            assert settings.actuator_dir is not None  # the settings' own check
            return LocalProcessActuator(
                settings.actuator_dir,
                control_url=settings.control_url,
                maxmemory=settings.replica_maxmemory,
                etcd_endpoints=sensors_etcd,
            )
        case "docker":
            given = {
                "deployment": settings.docker_deployment,
                "client_network": settings.docker_client_network,
                "peer_network": settings.docker_peer_network,
                "redis_image": settings.docker_redis_image,
                "sensor_image": settings.docker_image,
            }
            chosen = {field: value for field, value in given.items() if value is not None}
            return DockerActuator(
                DockerActuatorSettings(
                    control_url=settings.control_url, etcd_endpoints=sensors_etcd, **chosen
                )
            )
        case _:
            return None


class ControllerNode:
    def __init__(
        self, settings: ControllerSettings, *, store: CoordinationStore, stream: EventStream
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.store = store
        self.stream = stream
        self.definitions = load_workflows(settings.workflows)
        profile_rules: list[Rule] = []
        if settings.services is not None:  # a directory that is not there is refused
            profile_rules, profile_workflows = load_profiles(settings.services)
            self.definitions.update(profile_workflows)
        self.rules: RuleBook = load_rules(
            settings.rules,
            known_checks=CHECKS,
            known_actions=[*self.definitions, RECORD_ONLY_ACTION],
        )
        self.rules = RuleBook([*self.rules.rules, *profile_rules])
        actuator = chosen_actuator(settings)
        self.locks = store.locks
        self.gates = SafetyGates(settings, store)
        # Decisions must not wait on the record log (on etcd, a Redis of its own): while it is
        # away its writes are held (`held_records`).
        on_etcd = settings.coordination_backend == "etcd"
        self.records = HeldRecordLog(
            store.records, self.node_id, direct_timeout=DIRECT_WRITE_TIMEOUT if on_etcd else None
        )
        self.audit = AuditLog(self.records)
        self.topology = store.topology
        self.incidents = IncidentClaims(
            store.incidents,
            self.audit,
            ttl=settings.incident_ttl,
            retry_after=settings.incident_retry_seconds,
            decision_wait=settings.decision_wait,
            abandoned_after=settings.event_reclaim_seconds + settings.decision_budget,
        )
        self.metrics = ControllerMetrics()
        self.metrics.count_groups_recreated(stream)
        self.quorum = Quorum(settings, store, self.metrics)
        notifications = (
            load_notification_config(settings.notifications)
            if settings.notifications is not None
            else None
        )
        self.decisions = Decisions(
            self.node_id, self.records, self.audit, self.incidents, notifications, self.metrics
        )
        self.engine = WorkflowEngine(
            StepEnvironment(
                store,
                self.node_id,
                {"actuator": actuator},
                before_state_change=self._before_state_change,
                before_start=self._before_start,
            ),
            self.definitions,
            on_finished=self.decisions.workflow_finished,
            metrics=self.metrics,
        )
        self.keeper = ShardKeeper(
            store,
            self.node_id,
            settings.forensics_policy,
            settings.min_replicas,
            forensics=settings.forensics_rules(),
            actuator=actuator,
            gates=self.gates.keeper,
            records=self.records,
            metrics=self.metrics,
        )
        self.watch = ShardWatch(
            store,
            stream,
            self.keeper,
            self.node_id,
            WatchSettings(
                interval=settings.watch_interval,
                sensor_silence_after=settings.sensor_silence_after,
                self_report_after=settings.self_report_after,
                unwritable_after=settings.unwritable_after,
                degraded_after=settings.degraded_after,
                probe_timeout=max(settings.probe_timeout, 0.5),
                min_replicas=settings.min_replicas,
                environment=settings.environment,
                region=settings.region,
                report_ttl=int(settings.incident_ttl),
                reemit_every=settings.incident_retry_seconds,
            ),
            on_store_away=self.decisions.escalate_without_store,
            # On the Redis store the stream is in the store's own Redis: a refusal means no
            # claim, lock or topology can be had either, so there is nothing to decide with.
            decide_unpublished=(
                self.decide_own_report if settings.coordination_backend == "etcd" else None
            ),
        )
        self._tasks: list[asyncio.Task] = []
        self._handling: set[asyncio.Task] = set()
        self._late_notes: set[asyncio.Task] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        ensure_stream = getattr(self.stream, "ensure_stream", None)
        if ensure_stream is not None:  # Kinesis: create the stream on first start
            await ensure_stream()
        node, settings = self.node_id, self.settings
        self._tasks = [
            asyncio.create_task(
                background.consume_events(
                    self.stream,
                    node,
                    self.handle,
                    self._handling,
                    keep_every=settings.event_reclaim_seconds / 3,
                ),
                name=f"{node}-consume",
            ),
            asyncio.create_task(
                background.resume_orphans(self.engine, node, settings.resume_interval),
                name=f"{node}-resume",
            ),
            asyncio.create_task(
                background.keep_shards(self.keeper, node, settings.forensics_interval),
                name=f"{node}-shard-keeper",
            ),
            asyncio.create_task(
                watch_forever(self.watch, on_blind=self.decisions.watch_blind),
                name=f"{node}-shard-watch",
            ),
            asyncio.create_task(
                background.write_held_records(self.decisions, settings.watch_interval),
                name=f"{node}-held-records",
            ),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._handling, *self.watch.deciding, *self._late_notes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.engine.stop()
        # What was held for the record log goes now if it answers (a node stopped for an
        # upgrade should not take its decisions' records with it); it is not waited for.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.decisions.write_held(), STOP_WRITE_TIMEOUT)
        await self.quorum.aclose()
        await self.decisions.aclose()

    # -- intake ----------------------------------------------------------------------------
    async def submit(self, event: Event) -> str:
        """Deposit an event into the stream (the REST intake); raises EventIdReused when its id
        is another event's (the same event again is deposited: the stream's entries of one
        event are decided once)."""
        self._refuse_a_reused_id(event, await self.audit.get(event.id))
        return await self.stream.publish(event)

    @staticmethod
    def _refuse_a_reused_id(event: Event, existing: AuditRecord | None) -> None:
        # An event's id is its audit record's key: taken for another event, that record would
        # be overwritten, or this event never decided while the record of the other is shown.
        if existing is not None and not existing.is_of(event):
            raise EventIdReused(
                f"event id {quoted(event.id)} is already the id of another event (a "
                f"{existing.event.get('type')} of {existing.event.get('host')} at "
                f"{existing.event.get('occurred_at')}); expected a new id for a new event"
            )

    async def decide_own_report(self, event: Event) -> AuditRecord | None:
        """Decide a report of this node's shard watch that the event stream refused (its Redis
        dead; etcd only): the stream is the only way to the other nodes, and what decides
        (claims, locks, the topology) is in etcd, which may well answer."""
        return await self.handle(event, from_stream=False)

    async def handle(self, event: Event, *, from_stream: bool = True) -> AuditRecord | None:
        """Decide one event as its coordinator; returns its audit record (None for heartbeats).
        An event not `from_stream` (this node's own report, which the stream refused) was
        never handed out, so no record of it can exist: none is read. Raises EventIdReused
        for an event whose id another event's record holds."""
        if event.type == "SensorHeartbeat":
            await self.store.sensors.record_heartbeat(event)
            return None
        existing = await self.audit.get(event.id) if from_stream else None
        self._refuse_a_reused_id(event, existing)
        if existing is not None and existing.outcome != "received":
            await self.decisions.finish_escalation(existing)
            return existing  # decided already (a reclaimed entry)
        decisions = self.decisions
        record = await decisions.open(event)
        stale = self.gates.stale.check(event)
        if stale is not None:
            record.gate = stale.gate
            return await decisions.decide(record, "stale", stale.reason)
        try:
            claim = await self.incidents.claim(event)
        except DecisionPending:
            self.metrics.reports_held_back.inc()
            raise
        record.stage_ended("claimed")
        if claim.waited >= CLAIM_WAIT_NOTED:
            record.note(
                "waited_for_decision",
                f"waited {claim.waited:.2f} s for the decision of an earlier report",
                seconds=round(claim.waited, 3),
            )
        if claim.duplicate_of is not None:
            return await decisions.decide(
                record, "duplicate", f"same incident as event {claim.duplicate_of}"
            )
        if claim.abandoned:
            record.note(
                "took_over_undecided",
                f"event {claim.took_over_from} of this incident stayed undecided past "
                "reclaim and a decision; this report is decided on its own",
                undecided_event=claim.took_over_from,
            )
        elif claim.took_over_from is not None:
            record.note(
                "decided_afresh",
                f"event {claim.took_over_from} of this incident was refused without action; "
                "this report is decided on its own",
                refused_event=claim.took_over_from,
            )
        if is_failure(event):
            decisions.track_page(event)
        incidents = await self.gates.count_failure(event)
        if event.type in WATCH_EVENT_TYPES:
            # A controller's own report about the watchers: a person must look (the reason
            # says what was seen); nothing here acts on it.
            return await decisions.escalate(record, str(event.data.get("reason", event.type)))

        # -- the rule
        rule = self.rules.match(event)
        if rule is None:
            return await decisions.escalate(record, "no rule matches this event")
        record.rule = rule.name
        if rule.action.name == RECORD_ONLY_ACTION:
            await self.incidents.release_on_recovery(event)
            return await decisions.decide(record, "recorded", f"rule {rule.name} records the event")

        # -- the gates
        stop = await self.gates.before_action(event, incidents)
        record.stage_ended("gates")
        if stop is not None:
            return await decisions.stopped_by_gate(record, stop)

        # -- the quorum on the rule's checks
        verdicts, quorum, late = await self.quorum.gather_verdicts(event, rule)
        record.verdicts, record.quorum = verdicts, quorum
        record.stage_ended("quorum")
        try:
            decided = await self._decide_on_quorum(record, event, rule)
        except BaseException:
            if late is not None:
                late.cancel()
            raise
        if late is not None:
            # After the decision is saved, so the note lands on the decided record.
            self._follow_late_verdicts(record.event_id, late)
        return decided

    async def _decide_on_quorum(self, record: AuditRecord, event: Event, rule: Rule) -> AuditRecord:
        decisions = self.decisions
        quorum, verdicts = record.quorum, record.verdicts
        assert quorum is not None
        if not quorum.reached:
            failing = sorted({r.name for v in verdicts for r in v.results if not r.ok})
            return await decisions.escalate(
                record,
                f"quorum not reached: {len(quorum.passed)} of {quorum.required} nodes passed "
                f"every check"
                + (f" (failed: {', '.join(failing)})" if failing else "")
                # Who was counted: a node that answered twice shows why it is one vote.
                + f"; {quorum.tally()}",
            )
        # Both read before either decides (each a linearizable read of its own key on etcd, one
        # round trip for the two): shadow mode first, then a claim taken over.
        shadow, taker = await asyncio.gather(
            self.gates.shadow.check(event.service), self.incidents.taken_over_by(event)
        )
        if shadow is not None:
            record.would_run = rule.action.name
            await remember_shadow_decision(self.records, self.topology, event, rule.action.name)
            record.gate = shadow.gate
            return await decisions.decide(
                record, "no_action", f"{shadow.reason}: would run {rule.action.name}"
            )

        # -- the workflow
        if taker is not None:
            # Its claim was taken over as abandoned: the taker decides; acting too would fail
            # the shard over twice.
            record.note("claim_taken_over", f"event {taker} took this incident over", by=taker)
            return await decisions.decide(
                record, "duplicate", f"same incident as event {taker}, which took its claim over"
            )
        try:
            workflow = await self.engine.start(
                rule.action.name, self.workflow_inputs(rule, event), event_id=event.id
            )
        except WorkflowCancelled as cancelled:
            stop = cancelled.args[0] if cancelled.args else GateStop("kill_switch", "cancelled")
            record.note("workflow_cancelled", stop.reason)
            return await decisions.stopped_by_gate(record, stop)
        record.stage_ended("workflow_started")
        return await decisions.scheduled(record, event, workflow.id)

    def _follow_late_verdicts(self, event_id: str, late: asyncio.Task[list[NodeVerdict]]) -> None:
        async def note_them() -> None:
            try:
                await self.decisions.late_verdicts(event_id, await late)
            except asyncio.CancelledError:
                late.cancel()
                raise
            except Exception:  # the decision stands; only its note is missing
                log.exception("%s: late verdicts of event %s not recorded", self.node_id, event_id)

        task = asyncio.create_task(note_them(), name=f"{self.node_id}-late-verdicts-{event_id}")
        self._late_notes.add(task)
        task.add_done_callback(self._late_notes.discard)

    def workflow_inputs(self, rule: Rule, event: Event) -> dict[str, Any]:
        return {
            **rule.action.inputs,
            "event_id": event.id,
            "host": event.host,
            "service": event.service,
            "shard": event.shard,
            "failed_primary": event.data.get("primary"),
            "failed_shard_epoch": event.data.get("shard_epoch"),
            "min_replicas": self.settings.min_replicas,
            "forensics_policy": self.settings.forensics_policy,
            "target_replicas": event.data.get("replica_count"),
            "lock_kind": rule.lock or "service",
            "lock_resource": lock_resource(rule, event),
        }

    async def evaluate(self, event: Event, rule: Rule) -> NodeVerdict:
        """This node's verdict on the rule's checks (what a coordinating peer asks of it)."""
        return await self.quorum.evaluate(event, rule)

    # -- the workflow engine's gates -------------------------------------------------------
    async def _before_start(self, definition: WorkflowDefinition, inputs: dict[str, Any]) -> None:
        """The workflow engine's last word before a workflow starts."""
        stop = await self.gates.before_execution(definition.category)
        if stop is not None:
            raise WorkflowCancelled(stop)

    async def _before_state_change(self, workflow: WorkflowRecord, step: str) -> StepReads:
        """The kill switch gate of a state-changing step; the topology read in the same round
        trip is handed to the step (on etcd, one read-only transaction instead of two reads)."""
        # A node out of the control realm stops here without reading the store at all.
        stop = self.gates.realm.check()
        if stop is None:
            reads = await self.store.step_reads()
            stop = await self.gates.before_execution(
                workflow.definition.category, reads.kill_switches
            )
        if stop is not None:
            raise Escalate(f"{stop.gate}: {stop.reason}")
        return reads
