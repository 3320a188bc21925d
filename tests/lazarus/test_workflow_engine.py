"""The durable workflow engine against a real redis-server control store: order, history,
retries, timeouts, escalation, resume on another node, versioning and lock fencing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from lazarus_lite import control_keys
from lazarus_lite.locks import Locks
from lazarus_lite.steps import resource_locks  # noqa: F401  (registers lock.acquire / lock.release)
from lazarus_lite.workflow import (
    Escalate,
    StepContext,
    StepEnvironment,
    WorkflowDefinition,
    WorkflowEngine,
    WorkflowError,
    parse_workflow,
    step,
)
from ratequeue.redis_processes import RedisProcess, start_redis

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


@step("test.cleanup")
async def cleanup_step(ctx: StepContext) -> dict[str, Any]:
    calls["cleanup"] += 1
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


@pytest.fixture(scope="module")
def control_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    node = start_redis("control", "control", None, tmp_path_factory.mktemp("wf"))
    yield node
    node.stop()


@pytest.fixture
async def control(control_node: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis(host=control_node.host, port=control_node.port)
    await connection.flushall()
    yield connection
    await connection.aclose()


def definition(text: str) -> WorkflowDefinition:
    return parse_workflow(text, "test.yaml")


def engine_for(control: aioredis.Redis, node: str, *defs: WorkflowDefinition) -> WorkflowEngine:
    env = StepEnvironment(control=control, locks=Locks(control), node_id=node)
    return WorkflowEngine(env, {d.name: d for d in defs})


THREE_STEPS = definition("""
name: three
steps:
  - {name: c, run: test.record, needs: [b]}
  - {name: a, run: test.record}
  - {name: b, run: test.record, needs: [a]}
""")


async def test_steps_run_in_needs_order_with_each_start_and_result_recorded(
    control: aioredis.Redis,
) -> None:
    engine = engine_for(control, "n1", THREE_STEPS)
    started = await engine.start("three", {})
    await engine.wait(started.id)
    history = await engine.store.history(started.id)
    step_entries = [(h["kind"], h["step"]) for h in history if "step" in h]
    assert step_entries == [("step_started", "a"), ("step_succeeded", "a"),
                            ("step_started", "b"), ("step_succeeded", "b"),
                            ("step_started", "c"), ("step_succeeded", "c")]  # fmt: skip
    assert (await engine.store.load(started.id)).status == "succeeded"


async def test_a_failing_step_is_retried_and_succeeds_within_its_attempts(
    control: aioredis.Redis,
) -> None:
    flaky = definition("""
name: flaky
steps:
  - name: try_it
    run: test.flaky
    params: {succeed_on: 3}
    retry: {max_attempts: 3, backoff: 0.01}
""")
    engine = engine_for(control, "n1", flaky)
    started = await engine.start("flaky", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "succeeded"
    assert done.steps["try_it"].attempts == 3


async def test_a_step_that_keeps_failing_escalates_and_runs_on_failure(
    control: aioredis.Redis,
) -> None:
    failing = definition("""
name: failing
on_failure: test.cleanup
steps:
  - {name: first, run: test.record}
  - {name: try_it, run: test.flaky, needs: [first], retry: {max_attempts: 2, backoff: 0.01}}
  - {name: never, run: test.record, needs: [try_it]}
""")
    engine = engine_for(control, "n1", failing)
    started = await engine.start("failing", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated"
    assert "step try_it" in done.escalation and "attempt 2 failed" in done.escalation
    assert calls["never"] == 0 and calls["cleanup"] == 1


async def test_a_step_that_raises_escalate_is_not_retried(control: aioredis.Redis) -> None:
    escalating = definition("""
name: escalating
steps:
  - {name: judge, run: test.escalate, retry: {max_attempts: 5, backoff: 0.01}}
""")
    engine = engine_for(control, "n1", escalating)
    started = await engine.start("escalating", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and calls["judge"] == 1
    assert "a person must look" in done.escalation


async def test_a_step_past_its_timeout_fails(control: aioredis.Redis) -> None:
    slow = definition("name: slow\nsteps:\n  - {name: crawl, run: test.slow, timeout: 100ms}\n")
    engine = engine_for(control, "n1", slow)
    started = await engine.start("slow", {})
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and "timed out after 0.1 s" in done.escalation


async def test_a_workflow_past_its_timeout_escalates_before_the_next_step(
    control: aioredis.Redis,
) -> None:
    short = definition("""
name: short
timeout: 200ms
steps:
  - {name: wait, run: test.wait_for_gate}
  - {name: after, run: test.record, needs: [wait]}
""")
    engine = engine_for(control, "n1", short)
    started = await engine.start("short", {})
    await asyncio.sleep(0.4)
    open_gate()
    await engine.wait(started.id)
    done = await engine.store.load(started.id)
    assert done.status == "escalated" and "workflow timed out" in done.escalation
    assert calls["after"] == 0


async def test_another_node_resumes_a_workflow_whose_owner_died_without_redoing_steps(
    control: aioredis.Redis,
) -> None:
    gated = definition("""
name: gated
steps:
  - {name: before, run: test.record}
  - {name: wait, run: test.wait_for_gate, needs: [before]}
  - {name: after, run: test.record, needs: [wait]}
""")
    first = engine_for(control, "n1", gated)
    started = await first.start("gated", {})
    await until_called("wait")
    await first.stop()  # n1 dies: its lease on the workflow lapses
    second = engine_for(control, "n2", gated)
    open_gate()
    await resume_on(second)
    await second.wait(started.id)
    done = await second.store.load(started.id)
    assert done.status == "succeeded"
    assert done.nodes == ["n1", "n2"]
    assert calls["before"] == 1 and calls["after"] == 1


async def test_a_resumed_workflow_finishes_under_the_definition_it_started_with(
    control: aioredis.Redis,
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
    first = engine_for(control, "n1", version_one)
    started = await first.start("versioned", {})
    await until_called("wait")
    await first.stop()
    second = engine_for(control, "n2", version_two)
    open_gate()
    await resume_on(second)
    await second.wait(started.id)
    done = await second.store.load(started.id)
    assert done.definition.version == 1 and done.status == "succeeded"
    assert calls["old_step"] == 1 and calls["new_step"] == 0


async def test_a_step_cannot_act_once_its_workflow_lost_the_lock(control: aioredis.Redis) -> None:
    locked = definition("""
name: locked
steps:
  - {name: lock, run: lock.acquire}
  - {name: wait, run: test.wait_for_gate, needs: [lock]}
  - {name: act, run: test.guarded, needs: [wait]}
""")
    engine = engine_for(control, "n1", locked)
    started = await engine.start("locked", {"lock_kind": "shard", "lock_resource": "rq/s0"})
    await until_called("wait")
    await control.set(control_keys.lock("shard", "rq/s0"), "someone-else|999")  # expired and taken
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


def test_the_shipped_failover_workflow_loads() -> None:
    from lazarus_lite.settings import DEFINITIONS
    from lazarus_lite.steps import ratequeue_promotion  # noqa: F401
    from lazarus_lite.workflow import load_workflows

    loaded = load_workflows(Path(DEFINITIONS / "workflows"))
    steps = [s.name for s in loaded["ratequeue.failover"].order()]
    assert steps[:2] == ["acquire_lock", "fence_old_primary"] and steps[-1] == "release_lock"
