"""A workflow whose control store dies mid-step, on a real redis-server killed with SIGKILL and
started again from its AOF, or is cut off (it runs on, nothing reaches it): the owner cannot
renew its lease, so it stops the step in flight by itself, before its lease lapses, instead of
hanging or going on unfenced; once the store is back the workflow is resumed where its record
says and finishes, each finished step run once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from chaos.faults.base import NodeTarget
from common.redis_processes import RedisProcess
from lazarus_lite.coordination.interface import OWNER_LEASE_MS
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.engine import WorkflowEngine
from ratequeue.local_cluster import start_node
from tests.chaos.test_local_faults import (
    Recorder,
    faults,  # noqa: F401 (the fixture)
    needs_iptables,
)
from tests.lazarus.interrupted_workflow import INTERRUPTED, runs, stopped_at, until

pytestmark = pytest.mark.redis_control_store(
    "a control redis-server killed, restarted from its AOF or cut off under a workflow"
)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[RedisProcess]:
    runs.clear()
    stopped_at.clear()
    node = start_node("control", "control", None, tmp_path)
    yield node
    node.stop()


def engine_on(connection: aioredis.Redis, node: str) -> WorkflowEngine:
    store = RedisCoordinationStore(connection)
    return WorkflowEngine(StepEnvironment(store=store, node_id=node),
                          {INTERRUPTED.name: INTERRUPTED})  # fmt: skip


async def in_the_long_step(
    control: RedisProcess, socket_timeout: float
) -> tuple[WorkflowEngine, str]:
    connection = aioredis.Redis(host=control.host, port=control.port, socket_timeout=socket_timeout)
    engine = engine_on(connection, "n1")
    started = await engine.start("interrupted", {})

    async def long_step_running() -> bool:
        return runs.get("long", 0) == 1

    await until("the long step", long_step_running, 10)
    return engine, started.id


async def store_dies_mid_step(control: RedisProcess) -> tuple[WorkflowEngine, str]:
    engine, workflow_id = await in_the_long_step(control, socket_timeout=1.0)
    control.process.send_signal(signal.SIGKILL)
    control.process.wait(5)
    return engine, workflow_id


def test_the_owner_stops_the_step_by_itself_while_the_store_is_away(
    control: RedisProcess,
) -> None:
    async def scenario() -> None:
        engine, workflow_id = await store_dies_mid_step(control)
        # Without a renewal for most of its lease (3 s) the owner fences itself.
        await asyncio.wait_for(engine.wait(workflow_id), timeout=10)
        await engine.stop()

    asyncio.run(scenario())


@needs_iptables
def test_an_owner_whose_store_is_cut_off_stops_its_step_before_its_lease_lapses(
    control: RedisProcess,
    faults: Recorder,  # noqa: F811
) -> None:
    target = NodeTarget(name=control.name, role="control", port=control.port, pid=control.pid)

    async def scenario() -> float:
        # The controllers' socket timeout: a silent store answers no call for longer than a lease.
        engine, workflow_id = await in_the_long_step(control, socket_timeout=5.0)
        fault = faults.inject("blackhole", target, whole_node=True)
        cut_at = time.monotonic()

        async def step_stopped() -> bool:
            return "long" in stopped_at

        await until("the step stopping", step_stopped, 30)
        fault.rollback()
        await asyncio.wait_for(engine.wait(workflow_id), timeout=30)
        await engine.stop()
        return stopped_at["long"] - cut_at

    # Its last renewal was before the cut, so the lease lapses at most a lease after it.
    assert asyncio.run(scenario()) < OWNER_LEASE_MS / 1000


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
