"""A Lazarus-lite controller node: takes events from the stream, matches a rule, coordinates the
quorum of nodes on the rule's precondition checks, and schedules the rule's workflow, or
escalates; it also resumes orphaned workflows and runs the shard keeper (returning nodes).

The node that takes an event coordinates it: it evaluates the checks itself, asks its peers to
evaluate them on their own (`evaluate`), and needs `quorum` nodes whose every check passed.
Anything less, or no matching rule, escalates without acting. Each decision is written to the
audit trail as it is made. Not for: HTTP (see `service`) or the steps (see
`steps.ratequeue_promotion`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import httpx
import redis.asyncio as aioredis

from detection.events import Event
from detection.streams import EventStream, Received
from lazarus_lite import control_keys
from lazarus_lite import steps as _registers_the_steps  # noqa: F401
from lazarus_lite.actuators import LocalProcessActuator
from lazarus_lite.audit import AuditLog, AuditRecord, NodeVerdict, QuorumOutcome, note_deliveries
from lazarus_lite.checks import CHECKS, run_checks
from lazarus_lite.gates import (
    CircuitBreaker,
    ControlRealm,
    GateStop,
    KillSwitch,
    ServiceRateLimit,
    ShadowMode,
    StaleEventFilter,
    is_failure,
)
from lazarus_lite.locks import Locks
from lazarus_lite.paging import Pager, PageState
from lazarus_lite.profiles import load_profiles
from lazarus_lite.rules import Rule, RuleBook, load_rules
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.shard_keeper import RATEQUEUE_SERVICE, ShardKeeper
from lazarus_lite.shard_watch import (
    WATCH_EVENT_TYPES,
    ShardWatch,
    WatchSettings,
    watch_forever,
)
from lazarus_lite.workflow import (
    Escalate,
    StepEnvironment,
    WorkflowCancelled,
    WorkflowDefinition,
    WorkflowEngine,
    WorkflowRecord,
    load_workflows,
)
from notifications.config import load_notification_config
from notifications.delivery import Delivery
from ratequeue.topology import TopologyStore

log = logging.getLogger(__name__)

RECORD_ONLY_ACTION = "default.record"


UNACTED = {"escalated", "duplicate", "no_action", "stale"}


def incident_claim_key(event: Event) -> str:
    return control_keys.incident_claim(event.type, event.dedup_key)


def lock_resource(rule: Rule, event: Event) -> str:
    if rule.lock == "shard":
        return f"{event.service}/{event.shard}"
    if rule.lock == "service":
        return event.service
    return event.host


class ControllerNode:
    def __init__(
        self, settings: ControllerSettings, *, control: aioredis.Redis, stream: EventStream
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.control = control
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
        actuator = (
            LocalProcessActuator(settings.actuator_dir, control_url=settings.control_url)
            if settings.actuator_dir is not None
            else None
        )
        self.locks = Locks(control)
        self.stale_filter = StaleEventFilter(settings.max_event_age)
        self.rate_limit = ServiceRateLimit(
            control,
            window=settings.rate_limit_window,
            threshold=settings.rate_limit_threshold,
            overrides=settings.rate_limit_overrides,
        )
        self.breaker = CircuitBreaker(
            control, window=settings.breaker_window, threshold=settings.breaker_threshold
        )
        self.kill_switch = KillSwitch(control)
        self.shadow = ShadowMode(control)
        self.realm = ControlRealm(settings.region, settings.control_realm)
        self.engine = WorkflowEngine(
            StepEnvironment(
                control,
                self.locks,
                self.node_id,
                {"actuator": actuator},
                before_state_change=self._before_state_change,
                before_start=self._before_start,
            ),
            self.definitions,
            on_finished=self._workflow_finished,
        )
        self.audit = AuditLog(control)
        self.topology = TopologyStore(control)
        self.keeper = ShardKeeper(
            control, self.locks, self.node_id, settings.forensics_policy, settings.min_replicas
        )
        self.watch = ShardWatch(
            control,
            stream,
            self.keeper,
            self.node_id,
            WatchSettings(
                interval=settings.watch_interval,
                sensor_silence_after=settings.sensor_silence_after,
                self_report_after=settings.self_report_after,
                unwritable_after=settings.unwritable_after,
                probe_timeout=max(settings.probe_timeout, 0.5),
                min_replicas=settings.min_replicas,
                environment=settings.environment,
                region=settings.region,
                report_ttl=int(settings.incident_ttl),
                reemit_every=settings.incident_retry_seconds,
            ),
        )
        self.notifier = (
            Pager(
                load_notification_config(settings.notifications),
                on_deadline=self._page_deadline_passed,
            )
            if settings.notifications is not None
            else None
        )
        self._event_of_incident: dict[str, str] = {}
        self._http = httpx.AsyncClient(timeout=settings.quorum_timeout)
        self._tasks: list[asyncio.Task] = []
        self._handling: set[asyncio.Task] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        ensure_stream = getattr(self.stream, "ensure_stream", None)
        if ensure_stream is not None:  # Kinesis: create the stream on first start
            await ensure_stream()
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"{self.node_id}-consume"),
            asyncio.create_task(self._resume_orphans(), name=f"{self.node_id}-resume"),
            asyncio.create_task(self._keep_shards(), name=f"{self.node_id}-shard-keeper"),
            asyncio.create_task(
                watch_forever(self.watch, on_blind=self._watch_blind),
                name=f"{self.node_id}-shard-watch",
            ),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._handling]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handling, return_exceptions=True)
        await self.engine.stop()
        await self._http.aclose()
        if self.notifier is not None:
            await self.notifier.aclose()

    # -- intake ----------------------------------------------------------------------------
    async def submit(self, event: Event) -> str:
        """Deposit an event into the stream (the REST intake)."""
        return await self.stream.publish(event)

    async def _consume(self) -> None:
        while True:
            try:
                batch = await self.stream.receive(self.node_id, count=10, block_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: stream unavailable: %s", self.node_id, error)
                await asyncio.sleep(0.5)
                continue
            for received in batch:
                task = asyncio.create_task(self._handle_and_ack(received))
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)

    async def _handle_and_ack(self, received: Received) -> None:
        try:
            await self.handle(received.event)
            await self.stream.ack(received)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not acked: another node reclaims it after the stream's reclaim interval.
            log.exception("%s: event %s not handled", self.node_id, received.event.id)

    async def handle(self, event: Event) -> AuditRecord | None:
        """Decide one event as its coordinator; returns its audit record (None for heartbeats)."""
        if event.type == "SensorHeartbeat":
            await self.control.hset(control_keys.SENSORS, event.source, event.to_json())
            return None
        existing = await self.audit.get(event.id)
        if existing is not None and existing.outcome != "received":
            return existing  # decided already (a reclaimed entry)
        record = AuditRecord(
            event_id=event.id,
            event=event.model_dump(mode="json"),
            service=event.service,
            received_at=time.time(),
            coordinator=self.node_id,
        )
        await self.audit.save(record)
        stale = self.stale_filter.check(event)
        if stale is not None:
            record.gate = stale.gate
            return await self._decide(record, "stale", stale.reason)
        claimed = await self.control.set(
            incident_claim_key(event), event.id, nx=True, ex=int(self.settings.incident_ttl)
        )
        if not claimed:
            first = await self.control.get(incident_claim_key(event))
            first_id = first.decode() if first else "?"
            if first_id != event.id and not await self._take_over_declined_incident(
                event, first_id
            ):
                return await self._decide(record, "duplicate", f"same incident as event {first_id}")
        incidents = 0
        if is_failure(event) and self.notifier is not None:
            # The sensor paged; its acknowledgement deadline runs from when it saw the failure.
            self.notifier.track(
                event.dedup_key,
                event.service,
                triggered_at=event.occurred_at,
                summary=f"{event.type} {event.service}/{event.shard} {event.host}",
            )
            self._event_of_incident[event.dedup_key] = event.id
        if is_failure(event):
            incidents = await self.rate_limit.record(event)
            await self.breaker.record(event)
        if event.type in WATCH_EVENT_TYPES:
            # A controller's own report about the watchers: a person must look (the reason
            # says what was seen); nothing here acts on it.
            return await self._escalate(record, str(event.data.get("reason", event.type)))
        rule = self.rules.match(event)
        if rule is None:
            return await self._escalate(record, "no rule matches this event")
        record.rule = rule.name
        if rule.action.name == RECORD_ONLY_ACTION:
            await self._release_incident(event)
            return await self._decide(record, "recorded", f"rule {rule.name} records the event")
        # The regional breaker first: in an outage of many services every event escalates.
        for stop in (
            await self.breaker.check(event),
            await self.rate_limit.check(event, incidents),
            self.realm.check(event.region),
        ):
            if stop is not None:
                return await self._stopped_by_gate(record, stop)
        verdicts, quorum = await self.gather_verdicts(event, rule)
        record.verdicts, record.quorum = verdicts, quorum
        if not quorum.reached:
            failing = sorted({r.name for v in verdicts for r in v.results if not r.ok})
            return await self._escalate(
                record,
                f"quorum not reached: {len(quorum.passed)} of {quorum.required} nodes passed "
                f"every check" + (f" (failed: {', '.join(failing)})" if failing else ""),
            )
        shadow = await self.shadow.check(event.service)
        if shadow is not None:
            record.would_run = rule.action.name
            await self._remember_shadow_decision(record, rule, event)
            record.gate = shadow.gate
            return await self._decide(
                record, "no_action", f"{shadow.reason}: would run {rule.action.name}"
            )
        try:
            workflow = await self.engine.start(
                rule.action.name, self.workflow_inputs(rule, event), event_id=event.id
            )
        except WorkflowCancelled as cancelled:
            stop = cancelled.args[0] if cancelled.args else GateStop("kill_switch", "cancelled")
            record.note("workflow_cancelled", stop.reason)
            return await self._stopped_by_gate(record, stop)
        record.workflow_id = workflow.id
        if self.notifier is not None:
            note_deliveries(record, await self.notifier.acknowledge(event.dedup_key, event.service))
        return await self._decide(record, "scheduled", f"quorum reached; {workflow.id} runs")

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

    async def _decide(self, record: AuditRecord, outcome: Any, reason: str) -> AuditRecord:
        record.outcome, record.reason, record.decided_at = outcome, reason, time.time()
        await self.audit.save(record)
        await self._forget_incident_if_recovered(record)
        log.info("%s: event %s %s: %s", self.node_id, record.event_id, outcome, reason)
        return record

    async def _escalate(self, record: AuditRecord, reason: str) -> AuditRecord:
        await self._notify_escalation(record, reason)
        return await self._decide(record, "escalated", reason)

    async def _stopped_by_gate(self, record: AuditRecord, stop: GateStop) -> AuditRecord:
        """A gate stopped the action: NO_ACTION, and a person gets the event."""
        record.gate = stop.gate
        await self._notify_escalation(record, stop.reason)
        return await self._decide(record, "no_action", stop.reason)

    async def _notify_escalation(self, record: AuditRecord, reason: str) -> None:
        await self.control.xadd(
            control_keys.ESCALATIONS_STREAM,
            {"event_id": record.event_id, "reason": reason, "node": self.node_id},
            maxlen=10_000,
            approximate=True,
        )
        record.note("escalation", reason)
        log.warning("%s: event %s escalated: %s", self.node_id, record.event_id, reason)
        if self.notifier is not None:
            incident = _incident_key(record)
            note_deliveries(record, await self.notifier.escalate(incident, record.service, reason))

    async def _before_start(self, definition: WorkflowDefinition, inputs: dict[str, Any]) -> None:
        """The workflow engine's last word before a workflow starts (the seed's kill switch
        placement: one check, right before execution)."""
        stop = self.realm.check() or await self.kill_switch.check(definition.category)
        if stop is not None:
            raise WorkflowCancelled(stop)

    async def _before_state_change(self, workflow: WorkflowRecord, step: str) -> None:
        stop = self.realm.check() or await self.kill_switch.check(workflow.definition.category)
        if stop is not None:
            raise Escalate(f"{stop.gate}: {stop.reason}")

    async def _remember_shadow_decision(
        self, record: AuditRecord, rule: Rule, event: Event
    ) -> None:
        topology = await self.topology.load()
        primary = None
        if topology is not None and event.shard:
            try:
                primary = topology.shard(event.shard).primary.name
            except KeyError:
                primary = None
        await self.control.rpush(
            control_keys.SHADOW_DECISIONS,
            json.dumps(
                {
                    "event_id": event.id,
                    "service": event.service,
                    "shard": event.shard,
                    "type": event.type,
                    "action": rule.action.name,
                    "decided_at": time.time(),
                    "primary_then": primary,
                    "topology_epoch_then": topology.epoch if topology else None,
                }
            ),
        )

    async def _release_incident(self, event: Event) -> None:
        """A recovery ends the incident: a later failure of the same primary is a new one. If
        the failure is still being decided, it is released as soon as that decision is made
        without action (otherwise a real failure right after a false alarm would be dropped
        as its duplicate)."""
        if not event.incident_key:
            return
        key = control_keys.incident_claim("RedisMasterDown", event.incident_key)
        with contextlib.suppress(Exception):
            first = await self.control.get(key)
            if first is None:
                return
            down = await self.audit.get(first.decode())
            if down is None or down.outcome in UNACTED:
                await self.control.delete(key)
            elif down.outcome == "received":
                await self.control.set(control_keys.recovered_flag(key), "1",
                                       ex=int(self.settings.incident_ttl))  # fmt: skip

    async def _take_over_declined_incident(self, event: Event, first_id: str) -> bool:
        """A later report of an incident whose first report was declined (escalated, stopped by
        a gate) more than `incident_retry_seconds` ago is decided afresh: the sensors report a
        primary that stays down again, and conditions (a raced check, a closed gate) change."""
        first = await self.audit.get(first_id)
        if first is None or first.outcome not in {"escalated", "no_action"}:
            return False
        if time.time() - (first.decided_at or time.time()) < self.settings.incident_retry_seconds:
            return False
        key = incident_claim_key(event)
        taken = await self.control.set(key, event.id, xx=True, ex=int(self.settings.incident_ttl))
        return bool(taken)

    async def _forget_incident_if_recovered(self, record: AuditRecord) -> None:
        if record.outcome not in UNACTED:
            return
        key = incident_claim_key(Event.model_validate(record.event))
        if await self.control.delete(control_keys.recovered_flag(key)):
            await self.control.delete(key)

    # -- quorum ----------------------------------------------------------------------------
    async def evaluate(self, event: Event, rule: Rule) -> NodeVerdict:
        """Run the rule's checks from this node's own vantage point."""
        started = time.monotonic()
        try:
            topology = await self.topology.load()
            results = await run_checks(
                event,
                topology,
                rule.checks,
                min_replicas=self.settings.min_replicas,
                probe_timeout=self.settings.probe_timeout,
                control=self.control,
            )
        except Exception as error:
            return NodeVerdict(
                node=self.node_id,
                passed=False,
                error=str(error),
                seconds=time.monotonic() - started,
            )
        return NodeVerdict(
            node=self.node_id,
            passed=all(r.ok for r in results),
            results=results,
            seconds=time.monotonic() - started,
        )

    async def _ask_peer(self, url: str, event: Event, rule: Rule) -> NodeVerdict:
        started = time.monotonic()
        try:
            response = await self._http.post(
                f"{url}/v1/quorum/evaluate",
                json={"event": event.model_dump(mode="json"), "rule": rule.name},
                headers={"Authorization": f"Bearer {self.settings.api_token}"},
            )
            response.raise_for_status()
            return NodeVerdict.model_validate(response.json())
        except Exception as error:
            return NodeVerdict(
                node=url,
                passed=False,
                error=f"no answer: {error}",
                seconds=time.monotonic() - started,
            )

    async def gather_verdicts(
        self, event: Event, rule: Rule
    ) -> tuple[list[NodeVerdict], QuorumOutcome]:
        asks = [
            self.evaluate(event, rule),
            *(self._ask_peer(u, event, rule) for u in self.settings.peers),
        ]
        verdicts = list(await asyncio.gather(*asks))
        quorum = QuorumOutcome(
            required=self.settings.quorum,
            passed=[v.node for v in verdicts if v.passed],
            failed=[v.node for v in verdicts if not v.passed and v.error is None],
            unanswered=[v.node for v in verdicts if v.error is not None],
        )
        return verdicts, quorum

    # -- background duties -----------------------------------------------------------------
    async def _workflow_finished(self, workflow: WorkflowRecord) -> None:
        if workflow.event_id is None:
            return
        record = await self.audit.get(workflow.event_id)
        if record is None:
            return
        if workflow.status == "succeeded":
            record.outcome, record.reason = "remediated", f"workflow {workflow.id} succeeded"
            if self.notifier is not None:
                note_deliveries(
                    record,
                    await self.notifier.resolve(
                        _incident_key(record), record.service, f"remediated by {workflow.id}"
                    ),
                )
        else:
            record.outcome = "escalated"
            record.reason = f"workflow {workflow.id}: {workflow.escalation}"
            await self._notify_escalation(record, record.reason)
        record.note("workflow", f"{workflow.id} {workflow.status}", node=self.node_id)
        await self.audit.save(record)

    async def _page_deadline_passed(self, page: PageState, deliveries: list[Delivery]) -> None:
        """The acknowledgement deadline passed with the page still held: it went to a person."""
        event_id = self._event_of_incident.get(page.incident_key)
        record = await self.audit.get(event_id) if event_id else None
        if record is not None:
            record.note("page_deadline", f"page held past its deadline: escalated ({page.reason})")
            note_deliveries(record, deliveries)
            await self.audit.save(record)

    async def _watch_blind(self, reason: str) -> None:
        """This node cannot watch the shards (nor file a report): tell a person directly."""
        log.error("%s: %s", self.node_id, reason)
        if self.notifier is not None:
            await self.notifier.escalate(f"lazarus/{self.node_id}/blind", RATEQUEUE_SERVICE, reason)

    async def _resume_orphans(self) -> None:
        while True:
            try:
                await self.engine.resume_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: resume scan failed: %s", self.node_id, error)
            await asyncio.sleep(self.settings.resume_interval)

    async def _keep_shards(self) -> None:
        """Nodes that come back are put where the topology says (see `shard_keeper`)."""
        while True:
            await asyncio.sleep(self.settings.forensics_interval)
            try:
                for change in await self.keeper.run_once():
                    log.warning("%s: %s", self.node_id, change)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: shard keeper pass failed: %s", self.node_id, error)


def _incident_key(record: AuditRecord) -> str:
    return Event.model_validate(record.event).dedup_key
