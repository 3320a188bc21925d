"""A throwaway Docker deployment for the tests of the docker actuator, the docker faults and
target discovery: its own two user-defined bridge networks (client and peer, the split of
docker-compose.yml, each with a configured subnet whose upper half is the engine's dynamic
range) and the names the actuator derives from it. Everything it creates is removed at teardown,
also on failure: the containers the actuator started, then the networks.

The actuator follows the suite's switch (`RATEQUEUE_SUITE_CONTROL`, tests/suite_control.py): on
etcd it is configured as the controllers of an etcd deployment configure theirs (members named,
not run here, like the control store), so every replica and service host it starts carries them.

Not for: the compose file itself (tests/test_staging_compose.py) or images (docker/*.sh).
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.types import IPAMConfig, IPAMPool

from lazarus_lite.docker_actuator import (
    LABEL_DEPLOYMENT,
    DockerActuator,
    DockerActuatorSettings,
)
from tests.suite_control import suite_control

REDIS_IMAGE = "ratequeue-redis:local"
PROJECT_IMAGE = "ratequeue-testbed:local"
# The etcd members the actuator names on etcd: not run here, as the control store is not.
ETCD_MEMBERS = "http://10.0.0.7:2379,http://10.0.0.8:2379,http://10.0.0.9:2379"
IMAGE_SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "redis-image.sh"


def redis_image(client: docker.DockerClient) -> str:
    """The local Redis image; built from the host's redis-server if it is not there yet."""
    try:
        client.images.get(REDIS_IMAGE)
    except docker.errors.ImageNotFound:
        build = subprocess.run([str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, f"{IMAGE_SCRIPT} failed:\n{build.stdout}\n{build.stderr}"
    return REDIS_IMAGE


def sensor_image(client: docker.DockerClient) -> str:
    """The project image when built (deploy/build-images.sh), else the Redis image as a stand-in:
    these tests look at the sensor's container (labels, networks), not at it sensing."""
    try:
        client.images.get(PROJECT_IMAGE)
        return PROJECT_IMAGE
    except docker.errors.ImageNotFound:
        return redis_image(client)


@dataclass
class Deployment:
    name: str
    client_network: str
    peer_network: str
    actuator: DockerActuator
    client: docker.DockerClient


def bridge_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> None:
    """A bridge network on a random 10.x.y.0/24 that no other network of the engine uses."""
    for _ in range(20):
        subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        pool = IPAMPool(subnet=f"{subnet}.0/24", iprange=f"{subnet}.128/25")
        try:
            client.networks.create(name, driver="bridge", ipam=IPAMConfig(pool_configs=[pool]),
                                   labels=labels)  # fmt: skip
            return
        except docker.errors.APIError as error:
            if "overlap" not in str(error):
                raise
    raise AssertionError("no free 10.x.y.0/24 subnet for a test network")


@contextmanager
def deployment() -> Iterator[Deployment]:
    client = docker.from_env()
    name = f"rqtest-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_DEPLOYMENT: name}
    networks = [f"{name}-client", f"{name}-peer"]
    actuator = DockerActuator(
        DockerActuatorSettings(
            deployment=name,
            client_network=networks[0],
            peer_network=networks[1],
            redis_image=redis_image(client),
            sensor_image=sensor_image(client),
            control_url="redis://10.0.0.1:6379/0",  # the sensors' control store: not run here
            etcd_endpoints=ETCD_MEMBERS if suite_control() == "etcd" else None,
        )
    )
    try:
        for network in networks:
            bridge_network(client, network, labels)
        yield Deployment(name, networks[0], networks[1], actuator, client)
    finally:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_DEPLOYMENT}={name}"}
        ):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": f"{LABEL_DEPLOYMENT}={name}"}):
            network.remove()
        actuator.close()
        client.close()
