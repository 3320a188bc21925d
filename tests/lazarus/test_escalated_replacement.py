"""A failover that escalates after it provisioned a replacement gives back what it started and
the topology lists nowhere, and keeps what the topology lists. Real redis-server processes (a
shard, its replicas, the control store), the real failover workflow, and the local actuator or
the docker actuator against a real Docker engine (skipped without one). What the tests put in:
the local actuator's failure after it started the node (its sensor refused), and, for the kept
replacement, the promoted primary's death (`PrimaryDiesActuator`); the docker actuator's failure
is real (the engine refuses the sensor's container: its image is missing).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.faults.docker import engine_unavailable_reason
from lazarus_lite.actuators import Actuator, LocalProcessActuator
from lazarus_lite.coordination.opening import open_coordination_store
from lazarus_lite.docker_actuator import DockerActuator
from lazarus_lite.errors import ActuatorError
from lazarus_lite.shard_keeper import RATEQUEUE_SERVICE
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import NodeRef, Topology
from tests.docker_deployment import deployment
from tests.etcd_topology import map_in_store, store_address_of

_UNAVAILABLE = engine_unavailable_reason()

FAILOVER = parse_workflow(
    (
        Path(__file__).parents[2] / "lazarus_lite/definitions/workflows/ratequeue_failover.yaml"
    ).read_text(),
    "ratequeue_failover.yaml",
)


class SensorRefusedActuator(LocalProcessActuator):
    """Starts the replica for real, then fails as if its sensor could not be started."""

    async def provision_replica(self, shard: str, name: str) -> NodeRef:
        await super().provision_replica(shard, name)
        raise ActuatorError(f"sensor of {name}: the engine refused to start it")


class PrimaryDiesActuator(LocalProcessActuator):
    """Starts the replica for real, then the primary it is to join (the replica the failover
    promoted) dies by SIGKILL."""

    def __init__(self, workdir: Path, cluster: LocalCluster) -> None:
        super().__init__(workdir)
        self.cluster = cluster

    async def provision_replica(self, shard: str, name: str) -> NodeRef:
        node = await super().provision_replica(shard, name)
        promoted = (await map_in_store(self.cluster)).shard(shard).primary.name
        next(r for r in self.cluster.shards[0].replicas if r.name == promoted).signal(
            signal.SIGKILL
        )
        return node


@pytest.fixture
def actuator_dir(tmp_path: Path) -> Iterator[Path]:
    """The local actuator's working directory; what it started there is stopped afterwards
    (a kept replacement, or one an old build left running)."""
    workdir = tmp_path / "actuator"
    yield workdir
    cleaner = LocalProcessActuator(workdir)
    for name in {entry["name"] for entry in cleaner.provisioned()}:
        cleaner.remove(name)


def running(actuator: LocalProcessActuator, name: str) -> bool:
    """Does a process the actuator started under `name` still run redis-server?"""
    for entry in actuator.provisioned():
        if entry["name"] != name:
            continue
        try:
            if b"redis-server" in Path(f"/proc/{entry['pid']}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


async def fail_over(
    cluster: LocalCluster, actuator: Actuator
) -> tuple[WorkflowRecord, list[dict[str, Any]]]:
    """Kill the shard's primary and run the failover workflow to its end: its record and
    history."""
    shard = cluster.shards[0]
    shard.primary.signal(signal.SIGKILL)
    store = open_coordination_store(store_address_of(cluster))
    try:
        env = StepEnvironment(
            store=store,
            node_id="n1",
            collaborators={"actuator": actuator},
        )
        engine = WorkflowEngine(env, {FAILOVER.name: FAILOVER})
        started = await engine.start(
            FAILOVER.name,
            {
                "shard": shard.id,
                "failed_primary": shard.primary.name,
                "min_replicas": 1,
                "lock_kind": "shard",
                "lock_resource": f"{RATEQUEUE_SERVICE}/{shard.id}",
            },
        )
        await asyncio.wait_for(engine.wait(started.id), timeout=60)
        record = await engine.store.load(started.id)
        assert record is not None
        return record, await engine.store.history(started.id)
    finally:
        await store.aclose()


def listed_names(topology: Topology) -> set[str]:
    return {
        node.name
        for shard in topology.shards
        for node in [shard.primary, *shard.replicas, *shard.forensics]
    }


def test_an_escalation_removes_the_replacement_it_started_that_no_topology_lists(
    start_cluster_on_suite_control: Callable[..., LocalCluster], actuator_dir: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    actuator = SensorRefusedActuator(actuator_dir)
    record, _ = asyncio.run(fail_over(cluster, actuator))
    assert record.status == "escalated", record.escalation
    assert "provision_replacement" in (record.escalation or "")
    started = {entry["name"] for entry in actuator.provisioned()}
    assert len(started) == 1, started
    (name,) = started
    assert name not in listed_names(asyncio.run(map_in_store(cluster)))
    assert not running(actuator, name), f"{name} still runs after its workflow escalated"


def test_an_escalation_says_in_the_history_that_it_removed_the_replacement(
    start_cluster_on_suite_control: Callable[..., LocalCluster], actuator_dir: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    _, history = asyncio.run(fail_over(cluster, SensorRefusedActuator(actuator_dir)))
    (escalated,) = [entry for entry in history if entry["kind"] == "workflow_escalated"]
    assert escalated["on_failure"]["replacement"].startswith("removed s0-replica-e"), escalated


def test_an_escalation_keeps_a_replacement_the_topology_lists(
    start_cluster_on_suite_control: Callable[..., LocalCluster], actuator_dir: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    actuator = PrimaryDiesActuator(actuator_dir, cluster)
    record, _ = asyncio.run(fail_over(cluster, actuator))
    assert record.status == "escalated", record.escalation
    (name,) = {entry["name"] for entry in actuator.provisioned()}
    shard = asyncio.run(map_in_store(cluster)).shard("s0")
    assert name in {r.name for r in shard.replicas}, "the replacement was not listed"
    assert running(actuator, name), f"{name}, listed as a replica, was removed"


@pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"needs a Docker engine: {_UNAVAILABLE}")
def test_an_escalation_removes_the_replica_container_whose_sensor_the_engine_refused(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    with deployment() as staged:
        settings = staged.actuator.settings.model_copy(
            update={"sensor_image": f"{staged.name}-no-such-image:local"}
        )
        actuator = DockerActuator(settings, client=staged.client)
        record, history = asyncio.run(fail_over(cluster, actuator))

        assert "engine refused" in (record.escalation or ""), record.escalation
        left = [container.name for container in actuator.started()]
        assert left == [], f"the escalated workflow left {left}"
        (escalated,) = [entry for entry in history if entry["kind"] == "workflow_escalated"]
        assert escalated["on_failure"]["replacement"].startswith("removed "), escalated
