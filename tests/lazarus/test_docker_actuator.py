"""The docker actuator against a real Docker engine: a replacement replica is a parked Redis
container on both networks with a sensor beside it, labelled; a resumed step adopts it instead of
starting a second, and so does a step whose create is refused for the name, when the holder's
labels are its own (any other holder is refused and left alone); a stopped one comes back on the
same addresses; `remove` removes what it started. With no engine reachable the module skips and
says why (the refusal test needs none).

Not for: the workflow that calls the actuator (tests/test_failover_e2e.py) or the local one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker.errors
import pytest
import redis
from docker.models.containers import Container
from docker.models.networks import Network

from chaos.faults.docker import engine_unavailable_reason
from lazarus_lite.docker_actuator import (
    LABEL_ADDRESS,
    LABEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_ROLE,
    LABEL_SHARD,
    DockerActuator,
    DockerActuatorSettings,
)
from lazarus_lite.errors import ActuatorError
from lazarus_lite.forensics import copy_data_files
from ratequeue import membership
from ratequeue.topology import HeldNode
from tests.docker_deployment import ETCD_MEMBERS, Deployment, deployment

_UNAVAILABLE = engine_unavailable_reason()
needs_engine = pytest.mark.skipif(
    _UNAVAILABLE is not None, reason=f"needs a Docker engine: {_UNAVAILABLE}"
)


@pytest.fixture
def staged() -> Iterator[Deployment]:
    with deployment() as made:
        yield made


def replication_of(host: str | None, port: int) -> dict:
    with redis.Redis(host=host, port=port, socket_timeout=2) as conn:
        return conn.info("replication")


@needs_engine
def test_a_provisioned_replica_boots_parked_on_both_networks_with_a_labelled_sensor(
    staged: Deployment,
) -> None:
    node = asyncio.run(staged.actuator.provision_replica("s0", "s0-replica-e2"))

    assert membership.is_parked(replication_of(node.peer_host, node.port))
    assert replication_of(node.host, node.port)["role"] == "slave"  # the client path answers
    assert node.host != node.peer_host
    by_role = {c.labels[LABEL_ROLE]: c for c in staged.actuator.started()}
    assert set(by_role) == {"replica", "sensor"}
    for role, name in [("replica", "s0-replica-e2"), ("sensor", "sensor-s0-replica-e2")]:
        labels = by_role[role].labels
        assert (labels[LABEL_DEPLOYMENT], labels[LABEL_SHARD], labels[LABEL_NAME]) == (
            staged.name, "s0", name,
        )  # fmt: skip
    networks = by_role["replica"].attrs["NetworkSettings"]["Networks"]
    assert set(networks) == {staged.client_network, staged.peer_network}
    assert set(by_role["sensor"].attrs["NetworkSettings"]["Networks"]) == {staged.peer_network}


@needs_engine
def test_a_resumed_provision_adopts_the_container_it_started(staged: Deployment) -> None:
    first = staged.actuator.provision_replica_now("s1", "s1-replica-e3")
    again = staged.actuator.provision_replica_now("s1", "s1-replica-e3")

    assert again == first
    assert sorted(c.labels[LABEL_ROLE] for c in staged.actuator.started()) == [
        "replica", "sensor",
    ]  # fmt: skip


@needs_engine
def test_a_stopped_replica_is_started_again_on_its_addresses_with_its_data(
    staged: Deployment,
) -> None:
    first = staged.actuator.provision_replica_now("s0", "s0-replica-e2")
    with redis.Redis(host=first.peer_host, port=first.port) as conn:
        conn.config_set("replica-read-only", "no")
        conn.set("kept", "yes")
        conn.execute_command("BGREWRITEAOF")
    (replica,) = staged.actuator.started("s0-replica-e2")
    replica.stop(timeout=5)

    again = staged.actuator.provision_replica_now("s0", "s0-replica-e2")

    assert again == first
    with redis.Redis(host=again.peer_host, port=again.port) as conn:
        assert conn.get("kept") == b"yes"


@needs_engine
def test_remove_removes_the_replica_and_its_sensor_and_nothing_else(
    staged: Deployment,
) -> None:
    staged.actuator.provision_replica_now("s0", "s0-replica-e2")
    staged.actuator.provision_replica_now("s1", "s1-replica-e2")

    removed = staged.actuator.remove("s0-replica-e2")

    assert sorted(removed) == [f"{staged.name}-s0-replica-e2",
                               f"{staged.name}-sensor-s0-replica-e2"]  # fmt: skip
    assert sorted(c.labels[LABEL_NAME] for c in staged.actuator.started()) == [
        "s1-replica-e2", "sensor-s1-replica-e2",
    ]  # fmt: skip


@needs_engine
def test_a_replica_of_controllers_on_etcd_gets_a_sensor_reading_the_topology_in_etcd(
    staged: Deployment,
) -> None:
    members = ETCD_MEMBERS
    on_etcd = DockerActuator(
        staged.actuator.settings.model_copy(update={"etcd_endpoints": members}), staged.client
    )

    node = on_etcd.provision_replica_now("s2", "s2-replica-e2")

    (sensor,) = on_etcd.started(f"sensor-{node.name}")
    command = sensor.attrs["Config"]["Cmd"]
    assert command[command.index("--etcd-endpoints") + 1] == members
    assert command[command.index("--control") + 1] == staged.actuator.settings.control_url
    assert command[command.index("--replica") + 1] == node.peer_address


@needs_engine
def test_a_service_host_provisioned_on_etcd_gets_the_members_in_its_environment(
    staged: Deployment,
) -> None:
    """A profile's command names the control Redis alone; on etcd the replacement API (or
    controller) finds the topology through the environment the actuator gives it."""
    members = ETCD_MEMBERS
    on_etcd = DockerActuator(
        staged.actuator.settings.model_copy(update={"etcd_endpoints": members}), staged.client
    )

    on_etcd.provision_instance_now(
        "web", "web-e2", ["{python}", "-m", "http.server", "{port}"], "/"
    )

    (container,) = on_etcd.started("web-e2")
    environment = set(container.attrs["Config"]["Env"])
    assert {"RATEQUEUE_TOPOLOGY_BACKEND=etcd", f"RATEQUEUE_ETCD_ENDPOINTS={members}",
            "LAZARUS_COORDINATION_BACKEND=etcd", f"LAZARUS_ETCD_ENDPOINTS={members}",
            f"FAILOVER_ETCD_ENDPOINTS={members}"} <= environment  # fmt: skip


def test_an_unreachable_engine_is_refused_naming_it() -> None:
    actuator = DockerActuator(
        DockerActuatorSettings(
            control_url="redis://10.0.0.1:6379/0", docker_url="unix:///nonexistent/docker.sock"
        )
    )
    with pytest.raises(ActuatorError, match=r"unreachable \(unix:///nonexistent/docker.sock\)"):
        actuator.provision_replica_now("s0", "s0-replica-e2")


@needs_engine
def test_a_replica_left_on_one_network_by_an_interrupted_step_is_completed_on_resume(
    staged: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step is cut short between creating the container and connecting its second network.
    def interrupted(*_: object, **__: object) -> None:
        raise docker.errors.APIError("the engine went away")

    monkeypatch.setattr(Network, "connect", interrupted)
    with pytest.raises(ActuatorError):
        staged.actuator.provision_replica_now("s0", "s0-replica-e2")
    monkeypatch.undo()

    node = staged.actuator.provision_replica_now("s0", "s0-replica-e2")

    (replica,) = staged.actuator.started("s0-replica-e2")
    networks = replica.attrs["NetworkSettings"]["Networks"]
    assert set(networks) == {staged.client_network, staged.peer_network}
    assert replication_of(node.host, node.port)["role"] == "slave"


@needs_engine
def test_a_forensics_copy_of_a_container_is_taken_through_the_engine(
    staged: Deployment, tmp_path: Path
) -> None:
    node = asyncio.run(staged.actuator.provision_replica("s0", "s0-replica-e2"))
    with redis.Redis(host=node.peer_host, port=node.port, socket_timeout=2) as conn:
        # Writable for a moment, so it holds something to copy (parked, it refuses writes).
        conn.execute_command("REPLICAOF", "NO", "ONE")
        conn.config_set("min-replicas-to-write", 0)
        conn.set("held-for-forensics", "yes")
    held = HeldNode.of(node, time.time())

    copy = asyncio.run(copy_data_files(held, "s0", tmp_path, copier=staged.actuator))

    assert copy.parent == tmp_path / "s0"
    rdb = copy / "dump.rdb"
    assert rdb.is_file() and b"held-for-forensics" in rdb.read_bytes()
    assert any((copy / "appendonlydir").iterdir())  # the AOF came too


@needs_engine
def test_a_forensics_copy_of_a_node_with_no_container_fails_naming_it(
    staged: Deployment, tmp_path: Path
) -> None:
    with pytest.raises(ActuatorError, match="no container of s0-ghost"):
        staged.actuator.copy_data_out("s0-ghost", Path("/data"), ["dump.rdb"], tmp_path / "c")


@needs_engine
def test_a_disconnected_replica_keeps_its_address_from_a_newcomer(staged: Deployment) -> None:
    first = staged.actuator.provision_replica_now("s0", "s0-replica-e2")
    [container] = [c for c in staged.actuator.started("s0-replica-e2")
                   if c.labels[LABEL_ROLE] == "replica"]  # fmt: skip
    # A partition fault disconnects it: the engine frees its peer address.
    staged.client.networks.get(staged.peer_network).disconnect(container, force=True)

    second = staged.actuator.provision_replica_now("s0", "s0-replica-e3")

    assert second.peer_host != first.peer_host
    assert container.labels[LABEL_ADDRESS + staged.peer_network] == first.peer_host
    # ...so it can come back where the topology says it is.
    staged.client.networks.get(staged.peer_network).connect(container, ipv4_address=first.peer_host)


@needs_engine
def test_two_provisions_of_one_name_at_once_both_return_the_same_container(
    staged: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both look before either creates (as the next owner did while the last one's blocking call
    # ran on: issue 11), so one create is refused for the name and must adopt the other's.
    both_looked = threading.Barrier(2, timeout=30)
    listed = staged.actuator.started

    def look_then_wait(name: str | None = None) -> list[Container]:
        found = listed(name)
        both_looked.wait()
        return found

    monkeypatch.setattr(staged.actuator, "started", look_then_wait)
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(staged.actuator.provision_replica_now, "s1", "s1-replica-e8")
                 for _ in range(2)]  # fmt: skip
        first, second = (call.result(timeout=60) for call in calls)
    monkeypatch.undo()

    assert first == second
    assert sorted(c.labels[LABEL_ROLE] for c in staged.actuator.started()) == [
        "replica", "sensor",
    ]  # fmt: skip
    assert replication_of(first.host, first.port)["role"] == "slave"


@needs_engine
def test_a_foreign_container_holding_the_name_is_refused_and_left_alone(
    staged: Deployment,
) -> None:
    foreign_labels = {LABEL_DEPLOYMENT: staged.name, LABEL_ROLE: "probe"}
    foreign = staged.client.containers.create(
        staged.actuator.settings.redis_image,
        name=staged.actuator.container_name("s0-replica-e2"),
        labels=foreign_labels,
    )
    labels_before = foreign.labels  # the image's labels too

    with pytest.raises(ActuatorError, match=rf"container {foreign.name} holds the name") as refused:
        staged.actuator.provision_replica_now("s0", "s0-replica-e2")

    assert f"{LABEL_ROLE}='probe' (expected 'replica')" in str(refused.value)
    assert f"{LABEL_SHARD}=None (expected 's0')" in str(refused.value)
    foreign.reload()
    assert (foreign.status, foreign.labels) == ("created", labels_before)
    assert set(foreign.attrs["NetworkSettings"]["Networks"]) == {"bridge"}
