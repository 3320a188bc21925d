"""A workflow whose control store dies mid-step, on a real redis-server killed with SIGKILL and
started again from its AOF: the owner cannot renew its lease, so it stops the step in flight
by itself instead of hanging or going on unfenced; once the store is back the workflow is
resumed where its record says and finishes, each finished step run once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.redis_processes import RedisProcess
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.workflow.context import StepContext, StepEnvironment
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.registry import step
from ratequeue.local_cluster import start_node

runs: dict[str, int] = {}


@step("test.outage.count")
async def counted_step(ctx: StepContext) -> dict[str, Any]:
    runs[ctx.step] = runs.get(ctx.step, 0) + 1
    return {}


@step("test.outage.long")
async def long_step(ctx: StepContext) -> dict[str, Any]:
    """Long on its first run (the store dies meanwhile), quick when resumed."""
    runs[ctx.step] = runs.get(ctx.step, 0) + 1
    if runs[ctx.step] == 1:
        await asyncio.sleep(60)
    return {}


INTERRUPTED = parse_workflow("""
name: interrupted
timeout: 120
steps:
  - {name: before, run: test.outage.count}
  - {name: long, run: test.outage.long, needs: [before]}
  - {name: after, run: test.outage.count, needs: [long]}
""", "interrupted.yaml")  # fmt: skip


@pytest.fixture
def control(tmp_path: Path) -> Iterator[RedisProcess]:
    runs.clear()
    node = start_node("control", "control", None, tmp_path)
    yield node
    node.stop()


def engine_on(connection: aioredis.Redis, node: str) -> WorkflowEngine:
    store = RedisCoordinationStore(connection)
    return WorkflowEngine(StepEnvironment(store=store, node_id=node),
                          {INTERRUPTED.name: INTERRUPTED})  # fmt: skip


async def until(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(0.1)


async def store_dies_mid_step(control: RedisProcess) -> tuple[WorkflowEngine, str]:
    connection = aioredis.Redis(host=control.host, port=control.port, socket_timeout=1.0)
    engine = engine_on(connection, "n1")
    started = await engine.start("interrupted", {})

    async def in_the_long_step() -> bool:
        return runs.get("long", 0) == 1

    await until("the long step", in_the_long_step, 10)
    control.process.send_signal(signal.SIGKILL)
    control.process.wait(5)
    return engine, started.id


def test_the_owner_stops_the_step_by_itself_while_the_store_is_away(
    control: RedisProcess,
) -> None:
    async def scenario() -> None:
        engine, workflow_id = await store_dies_mid_step(control)
        # Without a renewal for most of its lease (3 s) the owner fences itself.
        await asyncio.wait_for(engine.wait(workflow_id), timeout=10)
        await engine.stop()

    asyncio.run(scenario())


def test_once_the_store_is_back_the_workflow_is_resumed_and_finishes_each_step_once(
    control: RedisProcess,
) -> None:
    async def scenario() -> tuple[str, list[str]]:
        engine, workflow_id = await store_dies_mid_step(control)

        async def stopped() -> bool:
            return workflow_id not in engine._running

        await until("the owner stopping", stopped, 10)
        control.restart()

        async def resumed() -> bool:
            return workflow_id in await engine.resume_orphans() or (workflow_id in engine._running)

        await until("the resume", resumed, 15)
        await engine.wait(workflow_id)
        record = await engine.store.load(workflow_id)
        await engine.stop()
        assert record is not None
        return record.status, record.nodes

    status, nodes = asyncio.run(scenario())
    assert status == "succeeded" and nodes == ["n1"]
    assert runs == {"before": 1, "long": 2, "after": 1}
