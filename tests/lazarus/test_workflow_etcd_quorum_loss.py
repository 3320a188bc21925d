"""A workflow whose coordination store on etcd loses its quorum mid-step (two of three real
etcd members killed with SIGKILL, started again from their data directories): the owner cannot
renew its lease, so it stops the step in flight by itself before the lease lapses, instead of
hanging or going on unfenced; once the quorum is back the workflow is resumed where its record
says and finishes, each finished step run once (issue 10, item 4, on etcd)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from common.etcd_processes import EtcdCluster
from common.redis_processes import RedisProcess
from lazarus_lite.coordination.etcd_backend import EtcdCoordinationStore
from lazarus_lite.coordination.interface import OWNER_LEASE_MS
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.records import WorkflowRecord
from tests.lazarus.interrupted_workflow import INTERRUPTED, runs, stopped_at, until


@pytest.fixture
async def store(
    etcd: EtcdCluster, control_node: RedisProcess
) -> AsyncIterator[EtcdCoordinationStore]:
    """An empty store on the module's etcd cluster (the record log in the control Redis)."""
    runs.clear()
    stopped_at.clear()
    opened = EtcdCoordinationStore.open(etcd.endpoints, control_node.url, timeout=1.0)
    await opened.client.delete("/", prefix=True)
    yield opened
    await opened.aclose()


async def quorum_lost_in_the_long_step(
    store: EtcdCoordinationStore, etcd: EtcdCluster
) -> tuple[WorkflowEngine, str, float]:
    """The workflow in its long step, then two members killed; returns when they died."""
    engine = WorkflowEngine(StepEnvironment(store=store, node_id="n1"),
                            {INTERRUPTED.name: INTERRUPTED})  # fmt: skip
    started = await engine.start("interrupted", {})

    async def long_step_running() -> bool:
        return runs.get("long", 0) == 1

    await until("the long step", long_step_running, 10)
    for member in etcd.members[:2]:
        member.kill()
    return engine, started.id, time.monotonic()


async def test_an_owner_whose_etcd_loses_its_quorum_stops_its_step_before_its_lease_lapses(
    store: EtcdCoordinationStore, etcd: EtcdCluster
) -> None:
    engine, workflow_id, lost_at = await quorum_lost_in_the_long_step(store, etcd)

    async def step_stopped() -> bool:
        return "long" in stopped_at

    await until("the step stopping", step_stopped, 15)
    await engine.stop()
    # Its last renewal was before the loss, so the lease lapses at most a lease after it.
    assert stopped_at["long"] - lost_at < OWNER_LEASE_MS / 1000
    record = await load_when_back(store, etcd, workflow_id)
    assert record.status == "running" and record.steps["after"].status == "pending"


async def load_when_back(
    store: EtcdCoordinationStore, etcd: EtcdCluster, workflow_id: str
) -> WorkflowRecord:
    """The workflow's record once the killed members are started again and a leader leads."""

    def restart_the_dead() -> None:
        for member in etcd.members:
            if not member.alive():
                member.restart()
        etcd.wait_for_leader()

    await asyncio.to_thread(restart_the_dead)
    record = await store.workflows.load(workflow_id)
    assert record is not None
    return record


async def test_once_the_quorum_is_back_the_workflow_is_resumed_and_finishes_each_step_once(
    store: EtcdCoordinationStore, etcd: EtcdCluster
) -> None:
    engine, workflow_id, _ = await quorum_lost_in_the_long_step(store, etcd)

    async def stopped() -> bool:
        return workflow_id not in engine._running

    await until("the owner stopping", stopped, 15)
    await load_when_back(store, etcd, workflow_id)

    async def resumed() -> bool:
        return workflow_id in await engine.resume_orphans() or workflow_id in engine._running

    await until("the resume", resumed, 15)
    await engine.wait(workflow_id)
    record = await store.workflows.load(workflow_id)
    await engine.stop()

    assert record is not None and (record.status, record.nodes) == ("succeeded", ["n1"])
    assert runs == {"before": 1, "long": 2, "after": 1}
