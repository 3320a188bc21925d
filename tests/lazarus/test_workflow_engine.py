"""The durable workflow engine against a real coordination store (the suite's: a redis-server
control store, or etcd): order, history, retries, timeouts, escalation, resume on another node,
versioning and lock fencing; what a start takes and gives back against both backends in every
run."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from common.etcd_processes import EtcdCluster
from common.redis_processes import RedisProcess
from detection.events import Event
from lazarus_lite.audit import AuditLog
from lazarus_lite.coordination import redis_keys
from lazarus_lite.coordination.interface import (
    OWNER_LEASE_MS,
    CoordinationStore,
    HeldLock,
    StepReads,
)
from lazarus_lite.coordination.opening import StoreAddress, open_coordination_store
from lazarus_lite.decisions import Decisions
from lazarus_lite.errors import Escalate, WorkflowCancelled, WorkflowError, WorkflowStartPending
from lazarus_lite.gates import GateStop
from lazarus_lite.held_records import HeldRecordLog
from lazarus_lite.incidents import IncidentClaims
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.steps import resource_locks  # noqa: F401  (registers lock.acquire / lock.release)
from lazarus_lite.workflow.context import LockTaken, StepContext, StepEnvironment, StepOutput
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.records import WorkflowRecord
from lazarus_lite.workflow.references import check_references, inputs_model
from lazarus_lite.workflow.registry import step
from tests.prometheus_samples import metric_samples

calls: Counter[str] = Counter()
gates: dict[str, asyncio.Event] = {}  # one per test: an Event binds to the loop that waits on it


@step("test.record")
async def record_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    return {"step": ctx.step}


@step("test.flaky")
async def flaky_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    if calls[ctx.step] < int(ctx.params.get("succeed_on", 99)):
        raise RuntimeError(f"attempt {calls[ctx.step]} failed")
    return {}


@step("test.slow")
async def slow_step(ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(10)
    return {}


@step("test.escalate")
async def escalating_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    raise Escalate("a person must look")


@step("test.wait_for_gate")
async def gated_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    await gates["gate"].wait()
    return {}


@step("test.guarded")
async def guarded_step(ctx: StepContext) -> dict[str, Any]:
    await ctx.assert_lock()
    calls[ctx.step] += 1
    return {}


seen_reads: list[StepReads | None] = []


@step("test.note_store_reads")
async def store_reads_step(ctx: StepContext) -> dict[str, Any]:
    seen_reads.append(ctx.store_reads)
    if len(seen_reads) == 1 and ctx.params.get("fail_first"):
        raise RuntimeError("first attempt failed")
    return {}


@step("test.cleanup")
async def cleanup_step(ctx: StepContext) -> dict[str, Any]:
    calls["cleanup"] += 1
    return {}


class Produced(StepOutput):
    value: int


class SomethingElse(StepOutput):
    other: str = ""


@step("test.produce", output=Produced)
async def producing_step(ctx: StepContext) -> Produced:
    calls[ctx.step] += 1
    return Produced(value=41)


@step("test.something_else", output=SomethingElse)
async def other_step(ctx: StepContext) -> SomethingElse:
    return SomethingElse()


@step("test.consume", output=Produced, reads={"produce": Produced})
async def consuming_step(ctx: StepContext) -> Produced:
    calls[ctx.step] += 1
    return Produced(value=ctx.output_of("produce", Produced).value + 1)


@step("test.misreport", output=Produced)
async def misreporting_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    return {"value": "not a number"}


@step("test.read_undeclared")
async def undeclared_reading_step(ctx: StepContext) -> dict[str, Any]:
    calls[ctx.step] += 1
    ctx.output_of("produce", Produced)
    return {}


@pytest.fixture(autouse=True)
async def fresh_counters_and_gate() -> None:
    calls.clear()
    gates["gate"] = asyncio.Event()


def open_gate() -> None:
    gates["gate"].set()


async def resume_on(engine: WorkflowEngine) -> None:
    """Wait (at most 10 s) until `engine` claims an orphaned workflow."""
    for _ in range(50):
        if await engine.resume_orphans():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("no orphaned workflow was resumed")


async def until_called(name: str) -> None:
    for _ in range(500):
        if calls[name]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"step {name} never ran")


async def run_to_the_end(
    engine: WorkflowEngine, name: str
) -> tuple[WorkflowRecord, list[dict[str, Any]]]:
    """Start workflow `name` and wait for its end: its record and history as stored."""
    started = await engine.start(name, {})
    await engine.wait(started.id)
    record = await engine.store.load(started.id)
    assert record is not None
    return record, await engine.store.history(started.id)


def definition(text: str) -> WorkflowDefinition:
    return parse_workflow(text, "test.yaml")


def engine_for(store: CoordinationStore, node: str, *defs: WorkflowDefinition) -> WorkflowEngine:
    env = StepEnvironment(store=store, node_id=node)
    return WorkflowEngine(env, {d.name: d for d in defs})


THREE_STEPS = definition("""
name: three
steps:
  - {name: c, run: test.record, needs: [b]}
  - {name: a, run: test.record}
  - {name: b, run: test.record, needs: [a]}
""")


async def test_steps_run_in_needs_order_with_each_start_and_result_recorded(
    coordination: CoordinationStore,
) -> None:
    record, history = await run_to_the_end(engine_for(coordination, "n1", THREE_STEPS), "three")
    step_entries = [(h["kind"], h["step"]) for h in history if "step" in h]
    assert step_entries == [("step_started", "a"), ("step_succeeded", "a"),
                            ("step_started", "b"), ("step_succeeded", "b"),
                            ("step_started", "c"), ("step_succeeded", "c")]  # fmt: skip
    assert record.status == "succeeded"


async def test_a_steps_result_is_saved_with_the_next_steps_start_in_one_save(
    coordination: CoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(coordination, "n1", THREE_STEPS)
    saves: list[list[str]] = []
    save = engine.store.save

    async def counted(
        record: WorkflowRecord, *entries: dict[str, Any], owner: str | None, **flags: bool
    ) -> None:
        saves.append([entry["kind"] for entry in entries])
        await save(record, *entries, owner=owner, **flags)

    monkeypatch.setattr(engine.store, "save", counted)
    _, history = await run_to_the_end(engine, "three")
    assert saves == [["workflow_started"],
                     ["workflow_running", "step_started"],
                     ["step_succeeded", "step_started"],
                     ["step_succeeded", "step_started"],
                     ["step_succeeded", "workflow_succeeded"]]  # fmt: skip
    assert [h["kind"] for h in history] == [kind for kinds in saves for kind in kinds]


async def test_a_steps_result_in_the_history_is_timed_when_it_succeeded_not_when_saved(
    coordination: CoordinationStore,
) -> None:
    record, history = await run_to_the_end(engine_for(coordination, "n1", THREE_STEPS), "three")
    succeeded = {h["step"]: h["at"] for h in history if h["kind"] == "step_succeeded"}
    assert succeeded == {name: pytest.approx(step_record.finished_at, abs=0.005)
                         for name, step_record in record.steps.items()}  # fmt: skip


async def test_a_state_changing_steps_gate_reads_while_its_start_is_being_saved(
    coordination: CoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate_entered = asyncio.Event()

    async def gate(record: WorkflowRecord, step_name: str) -> StepReads:
        gate_entered.set()
        return StepReads({}, None)

    env = StepEnvironment(store=coordination, node_id="n1",
                          before_state_change=gate)  # fmt: skip
    engine = WorkflowEngine(env, {"three": THREE_STEPS})
    save = engine.store.save

    async def save_once_the_gate_read(
        record: WorkflowRecord, *entries: dict[str, Any], owner: str | None, **flags: bool
    ) -> None:
        if entries[-1]["kind"] == "step_started":  # one after the other, this would time out
            await asyncio.wait_for(gate_entered.wait(), 2)
            gate_entered.clear()
        await save(record, *entries, owner=owner, **flags)

    monkeypatch.setattr(engine.store, "save", save_once_the_gate_read)
    started = await engine.start("three", {})
    await engine.wait(started.id)
    assert (await engine.store.load(started.id)).status == "succeeded"


async def test_a_step_stopped_by_its_gate_has_its_start_and_failure_recorded(
    coordination: CoordinationStore,
) -> None:
    async def gate(record: WorkflowRecord, step_name: str) -> StepReads:
        raise Escalate("kill_switch: on for failover")

    env = StepEnvironment(store=coordination, node_id="n1",
                          before_state_change=gate)  # fmt: skip
    engine = WorkflowEngine(env, {"three": THREE_STEPS})
    started = await engine.start("three", {})
    await engine.wait(started.id)
    history = await engine.store.history(started.id)
    assert [(h["kind"], h.get("step")) for h in history][-3:] == [
        ("step_started", "a"),
        ("step_failed", "a"),
        ("workflow_escalated", None),
    ]
    assert calls["a"] == 0


# Fails twice, then succeeds: within its three attempts.
FLAKY = definition("""
name: flaky
steps:
  - name: try_it
    run: test.flaky
    params: {succeed_on: 3}
    retry: {max_attempts: 3, backoff: 0.01}
""")


async def test_a_failing_step_is_retried_and_succeeds_within_its_attempts(
    coordination: CoordinationStore,
) -> None:
    engine = engine_for(coordination, "n1", FLAKY)
    started = await engine.start("flaky", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "succeeded"
    assert done.steps["try_it"].attempts == 3


async def test_each_step_attempt_is_timed_in_the_metrics_by_result(
    coordination: CoordinationStore,
) -> None:
    metrics = ControllerMetrics()
    env = StepEnvironment(store=coordination, node_id="n1")
    engine = WorkflowEngine(env, {"flaky": FLAKY}, metrics=metrics)
    started = await engine.start("flaky", {})
    await engine.wait(started.id)
    exposition = generate_latest(metrics.registry).decode()
    (family,) = [f for f in text_string_to_metric_families(exposition)
                 if f.name == "lazarus_workflow_step_seconds"]  # fmt: skip
    counts = {(s.labels["workflow"], s.labels["step"], s.labels["result"]): s.value
              for s in family.samples if s.name.endswith("_count")}  # fmt: skip
    assert counts == {("flaky", "try_it", "retried"): 2, ("flaky", "try_it", "succeeded"): 1}


GATED = definition("""
name: gated
steps:
  - name: change
    run: test.note_store_reads
    params: {fail_first: true}
    retry: {max_attempts: 2, backoff: 0.01}
  - {name: look, run: test.note_store_reads, changes_state: false}
""")


async def test_a_state_changing_step_gets_what_its_gate_read_fresh_for_each_attempt(
    coordination: CoordinationStore,
) -> None:
    gate_reads = [StepReads({}, None), StepReads({"other": {"by": "ops"}}, None)]
    handed: list[StepReads] = []

    async def gate(record: WorkflowRecord, step_name: str) -> StepReads:
        handed.append(gate_reads[len(handed)])
        return handed[-1]

    seen_reads.clear()
    env = StepEnvironment(store=coordination, node_id="n1",
                          before_state_change=gate)  # fmt: skip
    engine = WorkflowEngine(env, {"gated": GATED})
    started = await engine.start("gated", {})
    await engine.wait(started.id)

    assert (await engine.store.load(started.id)).status == "succeeded"
    # Two attempts of `change`, each with its own gate's reads; `look` has no gate: reads itself.
    assert seen_reads == [gate_reads[0], gate_reads[1], None]


def decision_event(event_id: str) -> Event:
    return Event(id=event_id, type="RedisMasterDown", environment="dev", region="local",
                 service="ratequeue", shard="s0", host="127.0.0.2:7001", source="test",
                 occurred_at=datetime.now(UTC))  # fmt: skip


async def test_each_event_counts_as_one_decision_and_its_workflow_end_apart(
    coordination: CoordinationStore,
) -> None:
    metrics = ControllerMetrics()
    store = coordination
    records = HeldRecordLog(store.records, "n1")
    audit = AuditLog(records)
    incidents = IncidentClaims(store.incidents, audit, ttl=60, retry_after=5)
    decisions = Decisions("n1", records, audit, incidents, None, metrics)
    engine = WorkflowEngine(StepEnvironment(store=store, node_id="n1"), {"flaky": FLAKY},
                            on_finished=decisions.workflow_finished, metrics=metrics)  # fmt: skip
    remediated = decision_event("remediated-event")
    record = await decisions.open(remediated)
    started = await engine.start("flaky", {}, event_id=remediated.id)
    await decisions.scheduled(record, remediated, started.id)
    await engine.wait(started.id)
    await decisions.escalate(await decisions.open(decision_event("escalated-event")), "no rule")

    samples = metric_samples(generate_latest(metrics.registry).decode())
    decided = {labels: value for (name, labels), value in samples.items()
               if name == "lazarus_decisions_total"}  # fmt: skip
    assert sum(decided.values()) == 2  # two events
    assert decided[(("outcome", "scheduled"),)] == decided[(("outcome", "escalated"),)] == 1
    assert samples[("lazarus_workflow_outcomes_total", (("outcome", "remediated"),))] == 1
    assert samples[("lazarus_workflow_outcomes_total", (("outcome", "escalated"),))] == 0
    assert (await audit.get(remediated.id)).outcome == "remediated"  # type: ignore[union-attr]


def claims_made(engine: WorkflowEngine) -> list[str]:
    """The workflow ids `engine` claims from now on, in order."""
    claimed: list[str] = []
    claim = engine.store.claim

    async def recording(workflow_id: str, node_id: str) -> bool:
        claimed.append(workflow_id)
        return await claim(workflow_id, node_id)

    engine.store.claim = recording  # type: ignore[method-assign]
    return claimed


# -- starting a workflow, on both backends: what a start takes, and gives back when it stops
@pytest.fixture(params=["redis", "etcd"])
async def either_store(
    request: pytest.FixtureRequest, control_node: RedisProcess
) -> AsyncIterator[CoordinationStore]:
    """An empty coordination store of either backend."""
    control_url = f"redis://{control_node.host}:{control_node.port}/0"
    if request.param == "redis":
        opened = open_coordination_store(StoreAddress(control_url=control_url))
        await opened.control.flushall()  # type: ignore[attr-defined]
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        opened = open_coordination_store(
            StoreAddress(
                control_url=control_url,
                coordination_backend="etcd",
                etcd_endpoints=",".join(cluster.endpoints),
            )
        )
        await opened.client.delete("/", prefix=True)  # type: ignore[attr-defined]
    yield opened
    await opened.aclose()


def engine_on(
    store: CoordinationStore,
    *defs: WorkflowDefinition,
    before_start: Callable[[WorkflowDefinition, dict[str, Any]], Awaitable[None]] | None = None,
) -> WorkflowEngine:
    env = StepEnvironment(store=store, node_id="n1", before_start=before_start)
    return WorkflowEngine(env, {d.name: d for d in defs})


async def test_an_event_started_again_adopts_its_workflow_and_drops_the_unused_claim(
    either_store: CoordinationStore,
) -> None:
    engine = engine_on(either_store, THREE_STEPS)
    first = await engine.start("three", {}, event_id="ev-again")
    claimed = claims_made(engine)
    again = await engine.start("three", {}, event_id="ev-again")
    await engine.wait(first.id)
    assert again.id == first.id
    assert len(claimed) == 1 and claimed[0] != first.id
    assert await engine.store.owner(claimed[0]) is None


async def test_an_adopted_workflow_is_returned_when_its_unused_claim_cannot_be_dropped(
    either_store: CoordinationStore,
) -> None:
    engine = engine_on(either_store, THREE_STEPS)
    first = await engine.start("three", {}, event_id="ev-again")
    await engine.wait(first.id)

    async def store_away(workflow_id: str, node_id: str) -> None:
        raise RedisConnectionError("control store away")

    engine.store.disown = store_away  # type: ignore[method-assign]
    again = await engine.start("three", {}, event_id="ev-again")
    assert again.id == first.id and again.status == "succeeded"


async def test_a_binding_that_fails_leaves_no_owner_claim_and_records_nothing(
    either_store: CoordinationStore,
) -> None:
    engine = engine_on(either_store, THREE_STEPS)
    claimed = claims_made(engine)

    async def store_away(event_id: str, workflow_id: str) -> str | None:
        raise RedisConnectionError("control store away")

    engine.store.bind_event = store_away  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError, match="control store away"):
        await engine.start("three", {}, event_id="ev-unbound")
    assert all([await engine.store.owner(id) is None for id in claimed])
    assert all([await engine.store.load(id) is None for id in claimed])


@pytest.mark.parametrize("failing", ["load", "rebind_event", "save"])
async def test_a_start_that_fails_after_its_binding_leaves_no_owner_claim(
    either_store: CoordinationStore, failing: str
) -> None:
    engine = engine_on(either_store, THREE_STEPS)
    await engine.store.bind_event("ev-gone", "wf-never-recorded")  # handled again
    claimed = claims_made(engine)

    async def store_away(*args: Any, **kwargs: Any) -> None:
        raise RedisConnectionError("control store away")

    setattr(engine.store, failing, store_away)
    with pytest.raises(RedisConnectionError, match="control store away"):
        await engine.start("three", {}, event_id="ev-gone")
    assert all([await engine.store.owner(id) is None for id in claimed])
    assert calls == Counter()


# -- one event started on two nodes at once (redelivered, handled side by side): one workflow
class FirstCallPaused:
    """A node's view of the workflow store whose first call of `method` pauses until
    `resume()`: before it is sent, or with `after`, once it has answered (what it answered is
    returned then). A start held between two of its writes, as a stalled node's is; `reached`
    says it got there, `called_again` that `method` was called a second time."""

    def __init__(self, store: Any, method: str, *, after: bool = False) -> None:
        self._store, self._method, self._after = store, method, after
        self.reached, self._resumed = asyncio.Event(), asyncio.Event()
        self.called_again = asyncio.Event()

    def resume(self) -> None:
        self._resumed.set()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._method:
            return real

        async def paused_once(*args: Any, **kwargs: Any) -> Any:
            if self.reached.is_set():
                self.called_again.set()
                return await real(*args, **kwargs)
            answer = await real(*args, **kwargs) if self._after else None
            self.reached.set()
            await self._resumed.wait()
            return answer if self._after else await real(*args, **kwargs)

        return paused_once


def two_nodes(store: CoordinationStore) -> tuple[WorkflowEngine, WorkflowEngine]:
    return engine_for(store, "n1", THREE_STEPS), engine_for(store, "n2", THREE_STEPS)


async def started_up_to_its_save(
    engine: WorkflowEngine, event_id: str
) -> tuple[FirstCallPaused, asyncio.Task[WorkflowRecord]]:
    """`engine`'s start of `event_id`, held once it bound the event and claimed its workflow,
    before its record is saved (`resume()` the first to go on)."""
    engine.store = saving = FirstCallPaused(engine.store, "save")  # type: ignore[assignment]
    starting = asyncio.create_task(engine.start("three", {}, event_id=event_id))
    await saving.reached.wait()
    return saving, starting


async def test_a_start_finding_its_event_bound_to_a_workflow_being_saved_adopts_it(
    either_store: CoordinationStore,
) -> None:
    first, second = two_nodes(either_store)
    saving, starting = await started_up_to_its_save(first, "ev-twice")
    second.store = looked = FirstCallPaused(second.store, "load", after=True)  # type: ignore[assignment]
    adopting = asyncio.create_task(second.start("three", {}, event_id="ev-twice"))
    await looked.reached.wait()  # n2 found the event bound, and no record under the id
    looked.resume()
    # n2 waits for the record (n1 holds the claim): it looks again, and replaces nothing
    await asyncio.wait_for(looked.called_again.wait(), 10)
    saving.resume()
    started, adopted = await asyncio.gather(starting, adopting)
    await first.wait(started.id)
    await second.wait(adopted.id)
    assert adopted.id == started.id
    assert calls == Counter({"a": 1, "b": 1, "c": 1})


async def test_a_start_finding_its_event_bound_to_a_workflow_unsaved_past_the_wait_runs_nothing(
    either_store: CoordinationStore,
) -> None:
    first, second = two_nodes(either_store)
    saving, starting = await started_up_to_its_save(first, "ev-twice")
    claimed = claims_made(second)
    with pytest.raises(WorkflowStartPending):
        await second.start("three", {}, event_id="ev-twice")
    saving.resume()
    started = await starting
    await first.wait(started.id)
    assert calls == Counter({"a": 1, "b": 1, "c": 1})
    assert await either_store.workflows.owner(claimed[0]) is None
    assert await either_store.workflows.load(claimed[0]) is None


async def test_a_start_whose_binding_was_replaced_before_its_first_save_runs_nothing(
    either_store: CoordinationStore,
) -> None:
    """n1's claim reaches the store after its binding (they go side by side), so n2 finds
    the binding with no claim and no record, as after a dead starter, and replaces it."""
    first, second = two_nodes(either_store)
    claiming = FirstCallPaused(first.store, "claim")
    first.store = binding = FirstCallPaused(claiming, "bind_event", after=True)  # type: ignore[assignment]
    starting = asyncio.create_task(first.start("three", {}, event_id="ev-twice"))
    await binding.reached.wait()
    await claiming.reached.wait()
    binding.resume()  # n1's binding is made; its claim is not sent yet
    replacing = await second.start("three", {}, event_id="ev-twice")
    claiming.resume()
    with pytest.raises(WorkflowStartPending):
        await starting
    await second.wait(replacing.id)
    assert calls == Counter({"a": 1, "b": 1, "c": 1})
    assert await either_store.workflows.bind_event("ev-twice", "wf-probe") == replacing.id
    assert await either_store.workflows.active() == []


async def test_an_event_bound_to_a_workflow_never_saved_whose_starter_is_gone_starts_anew(
    either_store: CoordinationStore,
) -> None:
    await either_store.workflows.bind_event("ev-orphaned", "wf-never-saved")  # no claim: gone
    engine = engine_for(either_store, "n2", THREE_STEPS)
    started = await engine.start("three", {}, event_id="ev-orphaned")
    await engine.wait(started.id)
    done = await either_store.workflows.load(started.id)
    assert done is not None and done.status == "succeeded"
    assert await either_store.workflows.bind_event("ev-orphaned", "wf-probe") == started.id
    assert calls == Counter({"a": 1, "b": 1, "c": 1})


async def test_a_start_whose_replacement_of_an_orphaned_binding_lost_to_another_adopts_its_workflow(
    either_store: CoordinationStore,
) -> None:
    await either_store.workflows.bind_event("ev-orphaned", "wf-never-saved")  # no claim: gone
    first, second = two_nodes(either_store)
    first.store = replacing = FirstCallPaused(first.store, "rebind_event")  # type: ignore[assignment]
    late = asyncio.create_task(first.start("three", {}, event_id="ev-orphaned"))
    await replacing.reached.wait()  # n1 is about to replace the orphaned binding
    started = await second.start("three", {}, event_id="ev-orphaned")  # n2 replaces it first
    replacing.resume()  # n1's replacement is refused: it follows the binding to n2's workflow
    adopted = await late
    await second.wait(started.id)
    assert adopted.id == started.id
    assert calls == Counter({"a": 1, "b": 1, "c": 1})


class KillSwitch:
    """`before_start` as the kill switch answers it: refuses while `engaged`."""

    def __init__(self) -> None:
        self.engaged = True

    async def __call__(self, definition: WorkflowDefinition, inputs: dict[str, Any]) -> None:
        if self.engaged:
            raise WorkflowCancelled(GateStop("kill_switch", "failover switched off"))


def refusing_engine(either_store: CoordinationStore, switch: KillSwitch) -> WorkflowEngine:
    return engine_on(either_store, THREE_STEPS, before_start=switch)


async def test_a_workflow_its_last_check_refuses_records_nothing_and_leaves_no_claim(
    either_store: CoordinationStore,
) -> None:
    engine = refusing_engine(either_store, KillSwitch())
    claimed = claims_made(engine)
    with pytest.raises(WorkflowCancelled):
        await engine.start("three", {}, event_id="ev-refused")
    assert all([await engine.store.owner(id) is None for id in claimed])
    assert all([await engine.store.load(id) is None for id in claimed])
    assert await engine.store.active() == []
    assert calls == Counter()


async def test_a_refused_workflow_leaves_its_event_unbound(either_store: CoordinationStore) -> None:
    engine = refusing_engine(either_store, KillSwitch())
    with pytest.raises(WorkflowCancelled):
        await engine.start("three", {}, event_id="ev-refused")
    assert await engine.store.bind_event("ev-refused", "wf-probe") is None


async def test_an_event_refused_then_started_once_the_switch_is_off_runs_its_workflow(
    either_store: CoordinationStore,
) -> None:
    switch = KillSwitch()
    engine = refusing_engine(either_store, switch)
    with pytest.raises(WorkflowCancelled):
        await engine.start("three", {}, event_id="ev-refused")
    switch.engaged = False
    started = await engine.start("three", {}, event_id="ev-refused")
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done is not None and done.status == "succeeded"
    assert done.event_id == "ev-refused"
    assert calls == Counter({"a": 1, "b": 1, "c": 1})


async def test_a_step_that_keeps_failing_escalates_and_runs_on_failure(
    coordination: CoordinationStore,
) -> None:
    failing = definition("""
name: failing
on_failure: test.cleanup
steps:
  - {name: first, run: test.record}
  - {name: try_it, run: test.flaky, needs: [first], retry: {max_attempts: 2, backoff: 0.01}}
  - {name: never, run: test.record, needs: [try_it]}
""")
    engine = engine_for(coordination, "n1", failing)
    started = await engine.start("failing", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated"
    assert "step try_it" in done.escalation and "attempt 2 failed" in done.escalation
    assert calls["never"] == 0 and calls["cleanup"] == 1


async def test_a_step_that_raises_escalate_is_not_retried(coordination: CoordinationStore) -> None:
    escalating = definition("""
name: escalating
steps:
  - {name: judge, run: test.escalate, retry: {max_attempts: 5, backoff: 0.01}}
""")
    engine = engine_for(coordination, "n1", escalating)
    started = await engine.start("escalating", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and calls["judge"] == 1
    assert "a person must look" in done.escalation


async def test_a_step_past_its_timeout_fails(coordination: CoordinationStore) -> None:
    slow = definition("name: slow\nsteps:\n  - {name: crawl, run: test.slow, timeout: 100ms}\n")
    engine = engine_for(coordination, "n1", slow)
    started = await engine.start("slow", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and "timed out after 0.1 s" in done.escalation


async def test_a_workflow_past_its_timeout_escalates_before_the_next_step(
    coordination: CoordinationStore,
) -> None:
    short = definition("""
name: short
timeout: 200ms
steps:
  - {name: wait, run: test.wait_for_gate}
  - {name: after, run: test.record, needs: [wait]}
""")
    engine = engine_for(coordination, "n1", short)
    started = await engine.start("short", {})
    await asyncio.sleep(0.4)
    open_gate()
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and "workflow timed out" in done.escalation
    assert calls["after"] == 0


cleanup_saw: list[str] = []


@step("test.cleanup_reading_the_record")
async def cleanup_reading_the_record(ctx: StepContext) -> dict[str, Any]:
    stored = await ctx.env.store.workflows.load(ctx.workflow.id)
    assert stored is not None
    cleanup_saw.append(stored.steps["wait"].status)
    return {}


async def test_a_cleanup_after_the_workflow_timed_out_finds_the_last_steps_result_saved(
    coordination: CoordinationStore,
) -> None:
    short = definition("""
name: short
timeout: 200ms
on_failure: test.cleanup_reading_the_record
steps:
  - {name: wait, run: test.wait_for_gate}
  - {name: after, run: test.record, needs: [wait]}
""")
    cleanup_saw.clear()
    engine = engine_for(coordination, "n1", short)
    started = await engine.start("short", {})
    await asyncio.sleep(0.4)
    open_gate()
    await engine.wait(started.id)
    assert cleanup_saw == ["succeeded"]


async def test_another_node_resumes_a_workflow_whose_owner_died_without_redoing_steps(
    coordination: CoordinationStore,
) -> None:
    gated = definition("""
name: gated
steps:
  - {name: before, run: test.record}
  - {name: wait, run: test.wait_for_gate, needs: [before]}
  - {name: after, run: test.record, needs: [wait]}
""")
    first = engine_for(coordination, "n1", gated)
    started = await first.start("gated", {})
    await until_called("wait")
    await first.stop()  # n1 dies: its lease on the workflow lapses
    second = engine_for(coordination, "n2", gated)
    open_gate()
    await resume_on(second)
    await second.wait(started.id)
    done = await second.store.load(started.id)
    assert done.status == "succeeded"
    assert done.nodes == ["n1", "n2"]
    assert calls["before"] == 1 and calls["after"] == 1


async def test_a_resumed_workflow_finishes_under_the_definition_it_started_with(
    coordination: CoordinationStore,
) -> None:
    version_one = definition("""
name: versioned
version: 1
steps:
  - {name: wait, run: test.wait_for_gate}
  - {name: old_step, run: test.record, needs: [wait]}
""")
    version_two = definition("""
name: versioned
version: 2
steps:
  - {name: new_step, run: test.record}
""")
    first = engine_for(coordination, "n1", version_one)
    started = await first.start("versioned", {})
    await until_called("wait")
    await first.stop()
    second = engine_for(coordination, "n2", version_two)
    open_gate()
    await resume_on(second)
    await second.wait(started.id)
    done = await second.store.load(started.id)
    assert done.definition.version == 1 and done.status == "succeeded"
    assert calls["old_step"] == 1 and calls["new_step"] == 0


async def test_a_step_cannot_act_once_its_workflow_lost_the_lock(
    coordination: CoordinationStore,
) -> None:
    locked = definition("""
name: locked
steps:
  - {name: lock, run: lock.acquire}
  - {name: wait, run: test.wait_for_gate, needs: [lock]}
  - {name: act, run: test.guarded, needs: [wait]}
""")
    engine = engine_for(coordination, "n1", locked)
    started = await engine.start("locked", {"lock_kind": "shard", "lock_resource": "rq/s0"})
    await until_called("wait")
    record = await engine.store.load(started.id)
    ours = LockTaken.model_validate(record.steps["lock"].output).lock
    await engine.env.locks.release(HeldLock(ours.key, ours.holder, ours.token))  # it expired,
    await engine.env.locks.acquire("shard", "rq/s0", "someone-else")  # and was taken
    open_gate()
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and "LockLost" in done.escalation
    assert calls["act"] == 0


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: w\nsteps:\n  - {name: a, run: test.nope}\n", "unknown step function 'test.nope'"),
        ("name: w\nsteps:\n  - {name: a, run: test.record, needs: [b]}\n", "needs unknown"),
        ("name: w\nsteps:\n  - {name: a, run: test.record, needs: [a]}\n", "cycle"),
        ("name: w\ntimeout: soon\nsteps:\n  - {name: a, run: test.record}\n", "'timeout'"),
    ],
)
def test_a_bad_workflow_definition_is_refused_naming_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(WorkflowError) as refused:
        parse_workflow(text, "bad.yaml")
    assert "bad.yaml" in str(refused.value) and named in str(refused.value)


def test_a_workflow_of_a_category_the_kill_switch_cannot_suspend_is_refused() -> None:
    with pytest.raises(WorkflowError) as refused:
        parse_workflow(
            "name: w\ncategory: nonsense\nsteps:\n  - {name: a, run: test.record}\n", "w.yaml"
        )
    assert str(refused.value) == (
        "w.yaml: field 'category': 'nonsense' is not a category the kill switch can suspend; "
        "expected one of ['failover', 'host_replacement', 'scaling']"
    )


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        (
            "  - {name: produced, run: test.produce}\n"
            "  - {name: consume, run: test.consume, needs: [produced]}\n",
            "step 'consume' (test.consume) reads 'produce', which is not a step of this workflow",
        ),
        (
            "  - {name: produce, run: test.produce}\n  - {name: consume, run: test.consume}\n",
            "step 'consume' (test.consume) reads 'produce', which does not run before it",
        ),
        (
            "  - {name: produce, run: test.something_else}\n"
            "  - {name: consume, run: test.consume, needs: [produce]}\n",
            "reads 'produce' as Produced, but 'produce' runs test.something_else, whose output "
            "is SomethingElse",
        ),
        (
            "  - {name: produce, run: test.record}\n"
            "  - {name: consume, run: test.consume, needs: [produce]}\n",
            "whose output is untyped",
        ),
    ],
)
def test_a_step_reading_what_its_workflow_does_not_produce_before_it_is_refused_at_load(
    steps: str, named: str
) -> None:
    with pytest.raises(WorkflowError) as refused:
        parse_workflow(f"name: reads\nsteps:\n{steps}", "reads.yaml")
    message = str(refused.value)
    assert "reads.yaml: workflow 'reads'" in message and named in message


def test_an_on_failure_step_that_reads_a_step_output_is_refused_at_load() -> None:
    with pytest.raises(WorkflowError) as refused:
        parse_workflow(
            "name: w\non_failure: test.consume\nsteps:\n  - {name: produce, run: test.produce}\n",
            "w.yaml",
        )
    assert "on_failure step (test.consume) reads 'produce'" in str(refused.value)


async def test_an_output_that_is_not_the_declared_model_fails_the_attempt(
    coordination: CoordinationStore,
) -> None:
    misreporting = definition("""
name: misreporting
steps:
  - {name: report, run: test.misreport, retry: {max_attempts: 2, backoff: 0.01}}
""")
    engine = engine_for(coordination, "n1", misreporting)
    started = await engine.start("misreporting", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and calls["report"] == 2
    assert "ValidationError" in done.escalation and done.steps["report"].output == {}


async def test_a_step_reading_what_it_did_not_declare_fails_without_retrying(
    coordination: CoordinationStore,
) -> None:
    sneaky = definition("""
name: sneaky
steps:
  - {name: produce, run: test.produce}
  - {name: peek, run: test.read_undeclared, needs: [produce], retry: {max_attempts: 5}}
""")
    engine = engine_for(coordination, "n1", sneaky)
    started = await engine.start("sneaky", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and calls["peek"] == 1
    assert "without declaring it" in done.escalation


def test_reads_through_an_ancestor_several_steps_back_resolve() -> None:
    definition("""
name: chain
steps:
  - {name: produce, run: test.produce}
  - {name: between, run: test.record, needs: [produce]}
  - {name: consume, run: test.consume, needs: [between]}
""")


@pytest.mark.redis_control_store(
    "the old record shape is written as the Redis backend's keys held it"
)
async def test_a_record_written_in_the_old_shape_resumes_with_typed_outputs(
    control: aioredis.Redis, coordination: CoordinationStore
) -> None:
    """A record as the code before typed outputs wrote it (plain dicts, no model names) is
    resumed, and the next step reads the stored output through its model."""
    old_record = {
        "id": "wf-oldshape0000000",
        "definition": {
            "name": "old",
            "version": 1,
            "description": "",
            "timeout": 1800.0,
            "category": "failover",
            "steps": [
                {"name": "produce", "run": "test.produce", "needs": [], "timeout": 30.0,
                 "retry": {"max_attempts": 1, "backoff": 0.2, "factor": 2.0},
                 "changes_state": True, "params": {}},
                {"name": "consume", "run": "test.consume", "needs": ["produce"],
                 "timeout": 30.0, "retry": {"max_attempts": 1, "backoff": 0.2, "factor": 2.0},
                 "changes_state": True, "params": {}},
            ],
            "on_failure": None,
        },
        "inputs": {"shard": "s0"},
        "event_id": None,
        "status": "running",
        "created_at": 1.0,
        "deadline": 9e12,
        "finished_at": None,
        "escalation": None,
        "steps": {
            "produce": {"status": "succeeded", "attempts": 1, "started_at": 1.0,
                        "finished_at": 2.0, "node": "old-node", "output": {"value": 41},
                        "error": None},
            "consume": {"status": "pending", "attempts": 0, "started_at": None,
                        "finished_at": None, "node": None, "output": {}, "error": None},
        },
        "nodes": ["old-node"],
    }  # fmt: skip
    # Written as the Redis backend's keys held it then (the store's own API writes today's shape).
    await control.set(redis_keys.workflow_record(old_record["id"]), json.dumps(old_record))
    await control.sadd(redis_keys.ACTIVE_WORKFLOWS, old_record["id"])
    engine = engine_for(coordination, "n2")
    await resume_on(engine)
    await engine.wait(old_record["id"])
    done = await engine.store.load(old_record["id"])
    assert isinstance(done, WorkflowRecord) and done.status == "succeeded"
    assert done.steps["consume"].output == {"value": 42}
    assert calls["produce"] == 0 and calls["consume"] == 1


def test_the_shipped_failover_workflow_loads() -> None:
    from lazarus_lite.settings import DEFINITIONS
    from lazarus_lite.steps import ratequeue_promotion  # noqa: F401
    from lazarus_lite.workflow.loading import load_workflows

    loaded = load_workflows(Path(DEFINITIONS / "workflows"))
    steps = [s.name for s in loaded["ratequeue.failover"].order()]
    assert steps[:2] == ["acquire_lock", "fence_old_primary"] and steps[-1] == "release_lock"
    assert check_references(loaded["ratequeue.failover"]) == []
    fields = inputs_model(loaded["ratequeue.failover"]).model_fields
    assert {"shard", "failed_primary", "min_replicas", "lock_kind", "lock_resource"} <= set(fields)


def test_the_failover_outputs_recorded_by_the_old_code_read_as_the_step_models() -> None:
    """Outputs as the Ratequeue steps wrote them before they were typed (plain dicts) still
    read through the models, so a failover interrupted across the upgrade resumes."""
    from lazarus_lite.steps.ratequeue_promotion import (
        CandidateChosen,
        CandidatePromoted,
        FenceResult,
    )

    lineage = {"replid": "a" * 40, "since": 10, "previous": None}
    fenced = FenceResult.model_validate(
        {
            "replicas": [
                {"name": "s0-r1", "reachable": True, "replid": "a" * 40, "offset": 99,
                 "enqueues": 7},
                {"name": "s0-r2", "reachable": False, "error": "Connection refused"},
            ],
            "old_primary_demoted": False,
            "topology_epoch": 4,
            "replica_count": 2,
            "lineage": lineage,
            "appointed_enqueues": None,
        }
    )  # fmt: skip
    assert [r.name for r in fenced.reached()] == ["s0-r1"] and fenced.lineage is not None
    chosen = {"candidate": "s0-r1", "offset": 99, "offsets": {"s0-r1": 99},
              "not_comparable": {}, "epoch": 5}  # fmt: skip
    assert CandidateChosen.model_validate(chosen).model_dump(mode="json") == chosen
    promoted = {"primary": "s0-r1", "epoch": 5, "promoted_at": 1.5, "lineage": lineage,
                "appointed_enqueues": 7}  # fmt: skip
    assert CandidatePromoted.model_validate(promoted).model_dump(mode="json") == promoted


@pytest.mark.parametrize(
    ("said", "read"),
    [(None, None), ("", None), (3, 3), (3.0, 3), (3.7, 3), ("3", 3), ("2.5", 2)],
)
def test_failover_inputs_read_free_form_event_numbers_as_int_always_did(
    said: object, read: int | None
) -> None:
    """Event data is free-form JSON: a number the old code read with `int()` still fails over."""
    from lazarus_lite.steps.ratequeue_promotion import ShardFailoverInputs

    inputs = ShardFailoverInputs.model_validate(
        {"shard": "s0", "failed_shard_epoch": said, "target_replicas": said}
    )
    assert inputs.failed_shard_epoch == read and inputs.target_replicas == read


def test_a_reached_replica_without_a_position_does_not_read_as_fenced() -> None:
    """The candidate rule compares reached replicas' positions: one never counts as offset 0."""
    from pydantic import ValidationError

    from lazarus_lite.steps.ratequeue_promotion import NodeFenced

    with pytest.raises(ValidationError, match="reachable but its replid or offset is missing"):
        NodeFenced.model_validate({"name": "s0-r1", "reachable": True})
    assert not NodeFenced.model_validate({"name": "s0-r1", "reachable": False}).reachable


class SlowRenewals:
    """A workflow store whose first renewal reaches the store (the lease restarts) at once but
    answers 1.5 s later (a guarded read sent to another member), and whose later renewals never
    answer (the node cut off): when the lease restarted, and when it would expire."""

    def __init__(self) -> None:
        self.lease_restarted: list[float] = []

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        if self.lease_restarted:
            await asyncio.Event().wait()
        self.lease_restarted.append(time.monotonic())
        await asyncio.sleep(1.5)
        return True

    async def load(self, workflow_id: str) -> None:
        return None


async def test_a_node_fences_itself_within_most_of_a_lease_of_its_last_keep_alive_not_answer(
    coordination: CoordinationStore,
) -> None:
    engine = engine_for(coordination, "n1", THREE_STEPS)
    renewals = SlowRenewals()
    engine.store = renewals  # type: ignore[assignment]
    await asyncio.wait_for(engine._keep_ownership("wf"), 10)
    fenced = time.monotonic()
    lease = OWNER_LEASE_MS / 1000
    # 60 % of a lease after the keep-alive (counted from the answer it would be 1.5 s later,
    # past the lease), with a second of room for a loaded machine, and before another node can
    # claim the lease.
    assert fenced - renewals.lease_restarted[0] < lease * 0.6 + 1.0 < lease


class RenewalsNeverAnswer:
    """A workflow store cut off from its node: a renewal neither answers nor fails."""

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        await asyncio.Event().wait()
        return True

    async def load(self, workflow_id: str) -> None:
        return None


async def test_a_run_whose_claim_was_taken_a_while_before_fences_itself_counting_from_the_claim(
    coordination: CoordinationStore,
) -> None:
    # A start that waited for another node's workflow runs its own about a second after its
    # claim: the lease expires a lease after the claim, not after the run's start.
    engine = engine_for(coordination, "n1", THREE_STEPS)
    engine.store = RenewalsNeverAnswer()  # type: ignore[assignment]
    lease = OWNER_LEASE_MS / 1000
    claimed_at = time.monotonic() - 1.5
    await asyncio.wait_for(engine._keep_ownership("wf", claimed_at), 10)
    fenced = time.monotonic()
    # 60 % of a lease after the claim, with half a second of room for a loaded machine: before
    # the lease, counted from the claim, lapses and another node may claim it.
    assert fenced - claimed_at < lease * 0.6 + 0.5 < lease
