"""Staging's nodes found, not listed: the containers of one deployment on the local Docker engine
(those labelled `ratequeue.deployment=NAME`, the compose file's and the ones the docker actuator
provisioned alike), each as a `DeploymentNode` named by its `ratequeue.name` label, with the
addresses the topology gives it when it is a shard node listed there (its role too: after a
failover the node labelled `primary` may be a replica), else the addresses of its networks.

Not for: injecting faults (`chaos.faults.docker`) or starting containers (the actuator).
"""

from __future__ import annotations

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from chaos.errors import TargetError
from chaos.targets import DeploymentNode
from lazarus_lite.docker_actuator import LABEL_DEPLOYMENT, LABEL_NAME, LABEL_ROLE, LABEL_SHARD
from ratequeue.topology import Topology


def discover_nodes(
    deployment: str, topology: Topology | None, client: docker.DockerClient | None = None
) -> list[DeploymentNode]:
    """Every container of `deployment` (running or not) as a node; TargetError if the engine
    cannot be asked."""
    own = client is None
    try:
        engine = client or docker.from_env(timeout=30)
        try:
            # A replacement the controllers remove while this lists is not a target.
            containers = engine.containers.list(
                all=True,
                filters={"label": f"{LABEL_DEPLOYMENT}={deployment}"},
                ignore_removed=True,
            )
        finally:
            if own:
                engine.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        raise TargetError(
            f"the nodes of deployment {deployment} cannot be found: the Docker engine does not "
            f"answer: {error}"
        ) from None
    listed = {}
    if topology is not None:
        for shard in topology.shards:
            listed[shard.primary.name] = (shard.id, "primary", shard.primary)
            for replica in shard.replicas:
                listed[replica.name] = (shard.id, "replica", replica)
    return [_node(c, listed) for c in containers if c.labels.get(LABEL_NAME)]


def _node(container: Container, listed: dict) -> DeploymentNode:
    labels = container.labels
    name = labels[LABEL_NAME]
    if name in listed:
        shard, role, ref = listed[name]
        return DeploymentNode(name=name, role=role, shard=shard, host=ref.host, port=ref.port,
                              peer_host=ref.peer_host, container=container.name)  # fmt: skip
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    addresses = [n.get("IPAddress") or (n.get("IPAMConfig") or {}).get("IPv4Address")
                 for n in networks.values()]  # fmt: skip
    found = [a for a in addresses if a]
    return DeploymentNode(
        name=name,
        role=labels.get(LABEL_ROLE, "unknown"),
        shard=labels.get(LABEL_SHARD),
        host=found[0] if found else "0.0.0.0",
        container=container.name,
    )
