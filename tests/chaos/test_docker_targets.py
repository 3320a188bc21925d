"""Staging's nodes are discovered, not listed: a replica the docker actuator provisioned is a
target like the others, with its addresses; a target file naming only endpoints and the
deployment finds it. With no engine reachable the module skips and says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.docker_targets import discover_nodes
from chaos.faults.docker import engine_unavailable_reason
from chaos.targets import Deployment
from tests.docker_deployment import Deployment as DockerDeployment
from tests.docker_deployment import deployment

_UNAVAILABLE = engine_unavailable_reason()
if _UNAVAILABLE is not None:
    pytest.skip(f"target discovery tests need a Docker engine: {_UNAVAILABLE}",
                allow_module_level=True)  # fmt: skip


@pytest.fixture
def staged() -> Iterator[DockerDeployment]:
    with deployment() as made:
        yield made


def test_a_provisioned_replica_is_discovered_as_a_target(staged: DockerDeployment) -> None:
    node = staged.actuator.provision_replica_now("s2", "s2-replica-e4")

    found = {n.name: n for n in discover_nodes(staged.name, topology=None)}

    replica = found["s2-replica-e4"]
    assert (replica.role, replica.shard) == ("replica", "s2")
    assert replica.container == f"{staged.name}-s2-replica-e4"
    assert replica.host in {node.host, node.peer_host}
    assert found["sensor-s2-replica-e4"].role == "sensor"


def test_a_target_file_with_only_endpoints_finds_the_deployments_nodes(
    staged: DockerDeployment,
) -> None:
    staged.actuator.provision_replica_now("s0", "s0-replica-e2")
    target = Deployment(api="http://127.0.0.1:1", control="redis://127.0.0.1:1/0",
                        docker_deployment=staged.name)  # fmt: skip

    assert target.node("s0-replica-e2").container == f"{staged.name}-s0-replica-e2"
    staged.actuator.remove("s0-replica-e2")
    target.refresh_nodes()
    assert "s0-replica-e2" not in {n.name for n in target.nodes}
