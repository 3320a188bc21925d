"""The Docker actuator: the `Actuator` protocol on a Docker engine, for the staging deployment
(docker-compose.yml), where the controllers reach the engine through its mounted socket.

A replacement replica is a container of the Redis image that boots parked (the same flags as
every shard node of the compose file, `REDIS_NODE_ARGV`), on both of the deployment's networks
with an address of its own on each (clients on the client network, replication, sensors and
controllers on the peer network), and a heartbeat sensor container beside it on the peer
network (reading the topology in etcd when the controllers keep it there: `etcd_endpoints`).
Every container it starts carries the labels `LABEL_*` (deployment, shard, role, name):
that is how a resumed step adopts the container an interrupted one started instead of starting
a second, how the chaos runner finds it as a target, and how `remove` finds what to remove.
Compose does not know them: remove them (label `ratequeue.provisioned-by=docker-actuator`)
before `docker compose down`, or the networks stay in use (the README's staging section).

Not for: deciding whether to provision (the workflow), returning a failed node to service (the
shard keeper), or faults on containers (`chaos.faults.docker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import httpx
import redis
import requests.exceptions
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import EndpointConfig, Mount
from pydantic import BaseModel, ConfigDict, Field

from lazarus_lite.actuators import store_environment
from lazarus_lite.errors import ActuatorError
from ratequeue.membership import boot_arguments
from ratequeue.topology import NodeRef

LABEL_DEPLOYMENT = "ratequeue.deployment"
LABEL_SHARD = "ratequeue.shard"
LABEL_ROLE = "ratequeue.role"
LABEL_NAME = "ratequeue.name"
# Set on what this actuator started (and only that): `remove_all` never touches the nodes the
# compose file declares.
LABEL_PROVISIONED = "ratequeue.provisioned-by"
PROVISIONED_BY = "docker-actuator"
# `ratequeue.address.<network>`: the address a started container was given on that network, for
# life. The engine frees an address when a container is disconnected (a partition fault): the
# label keeps a newcomer from taking it, so the node comes back where the topology says it is.
LABEL_ADDRESS = "ratequeue.address."

REDIS_PORT = 6379
# The redis-server command line of every shard node in a container: the flags of
# common/redis_processes.start_redis (tests/test_staging_compose.py checks both agree), listening
# on every address of the container, data in /data, logging to stdout, booting parked.
# Each shard node's memory limit on staging (docker-compose.yml gives its nodes the same).
STAGING_SHARD_MAXMEMORY = "512mb"
REDIS_NODE_ARGV: tuple[str, ...] = (
    "/usr/bin/redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
    "--dir", "/data", "--daemonize", "no", "--protected-mode", "no", "--save", "",
    "--appendonly", "yes", "--appendfsync", "everysec",
    "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
    "--repl-ping-replica-period", "1", "--repl-timeout", "5",
    "--lazyfree-lazy-expire", "yes", "--lazyfree-lazy-user-del", "yes",
    *boot_arguments(STAGING_SHARD_MAXMEMORY),
)  # fmt: skip


class DockerActuatorSettings(BaseModel):
    """Where and how the actuator starts containers; the defaults are docker-compose.yml's."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field("ratequeue", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    client_network: str = "ratequeue-client"
    peer_network: str = "ratequeue-peer"
    redis_image: str = "ratequeue-redis:local"
    sensor_image: str = "ratequeue-testbed:local"
    control_url: str = Field(description="the control store as the sensors reach it")
    etcd_endpoints: str | None = Field(
        None,
        description="the etcd members' client URLs as the sensors reach them, comma-separated, "
        "when the controllers keep the topology in etcd (unset: in the control store)",
    )
    docker_url: str | None = Field(None, description="the engine (default: DOCKER_HOST, socket)")
    ready_timeout: float = Field(20.0, gt=0, le=600)


class DockerActuator:
    """Provisions replicas (and their sensors) and stateless service hosts as containers."""

    def __init__(
        self, settings: DockerActuatorSettings, client: docker.DockerClient | None = None
    ) -> None:
        self.settings = settings
        self._client = client

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with self._engine("connect to the Docker engine"):
                self._client = (
                    docker.DockerClient(base_url=self.settings.docker_url, timeout=60)
                    if self.settings.docker_url
                    else docker.from_env(timeout=60)
                )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Every SDK or transport error becomes an ActuatorError saying what was being done."""
        try:
            yield
        except ActuatorError:
            raise
        except docker.errors.APIError as error:
            raise ActuatorError(f"docker actuator: {what}: the engine refused: {error}") from error
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            where = self.settings.docker_url or "DOCKER_HOST or the local socket"
            raise ActuatorError(
                f"docker actuator: {what}: Docker engine unreachable ({where}): {error}"
            ) from error

    def _labels(self, shard: str | None, role: str, name: str) -> dict[str, str]:
        labels = {
            LABEL_DEPLOYMENT: self.settings.deployment,
            LABEL_ROLE: role,
            LABEL_NAME: name,
            LABEL_PROVISIONED: PROVISIONED_BY,
        }
        if shard is not None:
            labels[LABEL_SHARD] = shard
        return labels

    def container_name(self, name: str) -> str:
        return f"{self.settings.deployment}-{name}"

    def started(self, name: str | None = None) -> list[Container]:
        """The containers this actuator started for the deployment (under `name`, when given)."""
        wanted = [f"{LABEL_DEPLOYMENT}={self.settings.deployment}",
                  f"{LABEL_PROVISIONED}={PROVISIONED_BY}"]  # fmt: skip
        if name is not None:
            wanted.append(f"{LABEL_NAME}={name}")
        with self._engine("list the containers it started"):
            # Another controller's keeper may remove one while this lists: it is not started.
            return list(
                self.client.containers.list(
                    all=True, filters={"label": wanted}, ignore_removed=True
                )
            )

    def _network(self, name: str) -> Network:
        with self._engine(f"find network {name}"):
            try:
                return self.client.networks.get(name)
            except docker.errors.NotFound:
                raise ActuatorError(
                    f"docker actuator: network {name!r} does not exist (is the deployment "
                    f"{self.settings.deployment} up?)"
                ) from None

    def _free_address(self, network: Network) -> str:
        """The lowest address of the network's dynamic range (`ip_range`, else its subnet) that
        no container holds. A chosen address, not the engine's: a container restarted on a
        user-defined network may otherwise come back on another address than the topology's."""
        network.reload()
        configs = network.attrs.get("IPAM", {}).get("Config") or []
        if not configs or not configs[0].get("Subnet"):
            raise ActuatorError(
                f"docker actuator: network {network.name} has no configured subnet, so a node "
                "cannot keep its address"
            )
        config = configs[0]
        pool = ipaddress.ip_network(config.get("IPRange") or config["Subnet"])
        taken = {config.get("Gateway")}
        for endpoint in (network.attrs.get("Containers") or {}).values():
            taken.add(endpoint.get("IPv4Address", "").partition("/")[0])
        # Stopped containers hold their chosen address too (they get it back when started), and
        # disconnected ones the address their label records.
        for container in self.client.containers.list(all=True, ignore_removed=True):
            settings = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
            chosen = (settings.get(network.name) or {}).get("IPAMConfig") or {}
            taken.add(chosen.get("IPv4Address"))
            taken.add(container.labels.get(LABEL_ADDRESS + network.name))
        for address in pool.hosts():
            if str(address) not in taken:
                return str(address)
        raise ActuatorError(f"docker actuator: no free address left in {pool} ({network.name})")

    def _address_on(self, container: Container, network: str) -> str:
        container.reload()
        settings = container.attrs["NetworkSettings"]["Networks"].get(network) or {}
        chosen = (settings.get("IPAMConfig") or {}).get("IPv4Address")
        address = chosen or settings.get("IPAddress")
        if not address:
            raise ActuatorError(
                f"docker actuator: container {container.name} has no address on {network}"
            )
        return address

    def _run(
        self,
        *,
        name: str,
        image: str,
        command: list[str],
        labels: dict[str, str],
        networks: list[str],
        **options: object,
    ) -> Container:
        """Create the container on the first network, connect it to the others, each with an
        address of its own, then start it; or, when the engine refuses the name because a
        container with this provision's labels holds it, adopt that one."""
        first, *others = [self._network(n) for n in networks]
        addresses = {}
        owned = labels
        for network in (first, *others):
            address = self._free_address(network)
            labels = {**labels, LABEL_ADDRESS + network.name: address}
            addresses[network.name] = address
        endpoint = EndpointConfig(self.client.api._version, ipv4_address=addresses[first.name])
        # A refusal for the name means a step that was not listed when this one looked (one
        # racing it, or a blocking call that ran on after its controller lost the lease: the
        # orphan of issue 11) created it meanwhile: adopt it if it is ours. The engine reserves
        # the name before the container can be looked up, and its holder may go away after the
        # refusal: while none is found, the create is tried again.
        deadline = time.monotonic() + self.settings.ready_timeout
        while True:
            try:
                container = self.client.containers.create(
                    image,
                    command=command,
                    name=self.container_name(name),
                    labels=labels,
                    network=first.name,
                    networking_config={first.name: endpoint},
                    **options,
                )
                break
            except docker.errors.APIError as error:
                if error.status_code != 409:
                    raise
            holder = self._holder_of(self.container_name(name), owned)
            if holder is not None:
                return self._adopt(holder, networks)
            if time.monotonic() > deadline:
                raise ActuatorError(
                    f"docker actuator: the name {self.container_name(name)} stayed refused as in "
                    f"use for {self.settings.ready_timeout}s while no container could be found "
                    "under it"
                )
            time.sleep(0.1)
        # Connected to the others (at the addresses its labels record) and started as a resumed
        # step would: a step adopting it meanwhile may be doing the same, and either may win.
        return self._adopt(container, networks)

    def _holder_of(self, container_name: str, owned: dict[str, str]) -> Container | None:
        """The container holding `container_name`, if its labels are `owned` (the ones this
        provision would set); None when none holds it. Any other holder is refused, named with
        the labels that differ, and left alone."""
        try:
            holder = self.client.containers.get(container_name)
        except docker.errors.NotFound:
            return None
        differ = {
            key: (holder.labels.get(key), wanted)
            for key, wanted in owned.items()
            if holder.labels.get(key) != wanted
        }
        if differ:
            found = ", ".join(
                f"{key}={have!r} (expected {wanted!r})" for key, (have, wanted) in differ.items()
            )
            raise ActuatorError(
                f"docker actuator: container {container_name} holds the name but is not this "
                f"provision's, so it is left alone: {found}"
            )
        return holder

    def _adopt(self, container: Container, networks: list[str]) -> Container:
        """A container an earlier step started, made whole: connected to each of `networks` it
        is not on (a step cut short between `_run`'s create and connect left it on the first
        only), and running."""
        container.reload()
        joined = container.attrs["NetworkSettings"]["Networks"] or {}
        for network in (self._network(n) for n in networks if n not in joined):
            recorded = container.labels.get(LABEL_ADDRESS + network.name)
            try:
                network.connect(container, ipv4_address=recorded or self._free_address(network))
            except docker.errors.APIError:
                # The step that created it may be connecting it at this moment: joined is done.
                container.reload()
                if network.name not in (container.attrs["NetworkSettings"]["Networks"] or {}):
                    raise
        if container.status != "running":
            container.start()
        return container

    # -- replicas ---------------------------------------------------------------------------

    async def provision_replica(self, shard: str, name: str) -> NodeRef:
        return await asyncio.to_thread(self.provision_replica_now, shard, name)

    def provision_replica_now(self, shard: str, name: str) -> NodeRef:
        """`provision_replica`, blocking: adopt the replica container started under `name` (and
        start it again if it stopped: same addresses, same data), else start one and its sensor.
        Returns once it answers PING on its peer address."""
        what = f"provision replica {name} of {shard}"
        with self._engine(what):
            self.client.ping()
            replicas = [c for c in self.started(name) if c.labels.get(LABEL_ROLE) == "replica"]
            networks = [self.settings.peer_network, self.settings.client_network]
            if replicas:
                container = self._adopt(replicas[0], networks)
            else:
                container = self._run(
                    name=name,
                    image=self.settings.redis_image,
                    command=list(REDIS_NODE_ARGV[1:]),
                    labels=self._labels(shard, "replica", name),
                    networks=networks,
                    entrypoint=[REDIS_NODE_ARGV[0]],
                    # Its data lives as long as the container: kept across a restart, removed
                    # with it. No restart policy: a returning node rejoins through the keeper.
                    mounts=[Mount(target="/data", source=None, type="volume")],
                    restart_policy={"Name": "no"},
                )
            node = NodeRef(
                name=name,
                host=self._address_on(container, self.settings.client_network),
                port=REDIS_PORT,
                peer_host=self._address_on(container, self.settings.peer_network),
            )
            self._wait_answers(node, container)
            self._provision_sensor(shard, node)
        return node

    def _wait_answers(self, node: NodeRef, container: Container) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        while True:
            try:
                with redis.Redis(host=node.peer_host, port=node.port, socket_timeout=1,
                                 socket_connect_timeout=1) as conn:  # fmt: skip
                    if conn.ping():
                        return
            except redis.RedisError:
                pass
            container.reload()
            if container.status == "exited" or time.monotonic() > deadline:
                raise ActuatorError(
                    f"docker actuator: replica {node.name} (container {container.name}, status "
                    f"{container.status}) does not answer PING on {node.peer_address}"
                )
            time.sleep(0.1)

    def sensor_command(self, node: NodeRef) -> list[str]:
        """The command line of `node`'s sensor: it reads and watches the topology where the
        controllers keep it (etcd, when its endpoints are set) and sends its events to the
        stream in the control store either way."""
        etcd = self.settings.etcd_endpoints
        return [
            "detection", "sensor", "--control", self.settings.control_url,
            "--replica", node.peer_address, "--name", f"sensor-{node.name}",
            *(["--etcd-endpoints", etcd] if etcd else []),
        ]  # fmt: skip

    def _provision_sensor(self, shard: str, node: NodeRef) -> None:
        name = f"sensor-{node.name}"
        existing = self.started(name)
        if existing:
            self._adopt(existing[0], [self.settings.peer_network])
            return
        self._run(
            name=name,
            image=self.settings.sensor_image,
            command=self.sensor_command(node),
            labels=self._labels(shard, "sensor", name),
            networks=[self.settings.peer_network],
            init=True,
            restart_policy={"Name": "unless-stopped"},
        )

    # -- stateless service hosts ------------------------------------------------------------

    async def provision_instance(
        self, service: str, name: str, command: list[str], healthcheck_path: str
    ) -> str:
        return await asyncio.to_thread(
            self.provision_instance_now, service, name, command, healthcheck_path
        )

    def provision_instance_now(
        self, service: str, name: str, command: list[str], healthcheck_path: str
    ) -> str:
        """A container of the service image on both networks running `command` ({python},
        {host}, {port} and {control_url} filled in; on etcd its environment names the members:
        `store_environment`); its peer-network URL once healthy."""
        values = {"python": "python3", "host": "0.0.0.0", "port": "8080",
                  "control_url": self.settings.control_url}  # fmt: skip
        with self._engine(f"provision instance {name} of {service}"):
            self.client.ping()
            existing = self.started(name)
            networks = [self.settings.peer_network, self.settings.client_network]
            if existing:
                container = self._adopt(existing[0], networks)
            else:
                container = self._run(
                    name=name,
                    image=self.settings.sensor_image,
                    command=[part.format(**values) for part in command],
                    labels={**self._labels(None, "instance", name), "ratequeue.service": service},
                    networks=networks,
                    init=True,
                    restart_policy={"Name": "unless-stopped"},
                    environment=store_environment(self.settings.etcd_endpoints),
                )
            url = f"http://{self._address_on(container, self.settings.peer_network)}:8080"
            deadline = time.monotonic() + self.settings.ready_timeout
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}{healthcheck_path}", timeout=1).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise ActuatorError(f"docker actuator: {name} not healthy at {url} within the timeout")

    # -- removal ----------------------------------------------------------------------------

    def copy_data_out(self, node: str, data_dir: Path, names: list[str], into: Path) -> None:
        """The `DataCopier` of the forensics copy: the files `names` of `data_dir` in the
        deployment's container of `node` (compose's or one it started: found by its labels),
        copied out through the engine (`GET /containers/{id}/archive`) into `into`."""
        wanted = [f"{LABEL_DEPLOYMENT}={self.settings.deployment}", f"{LABEL_NAME}={node}"]
        with self._engine(f"copy the data of {node} out of its container"):
            found = self.client.containers.list(
                all=True, filters={"label": wanted}, ignore_removed=True
            )
            if not found:
                raise ActuatorError(f"docker actuator: no container of {node} to copy data from")
            into.mkdir(parents=True)
            for index, name in enumerate(names):
                try:
                    stream, _ = found[0].get_archive(str(data_dir / name))
                except docker.errors.NotFound:
                    if index == 0:
                        raise FileNotFoundError(f"{node}: {data_dir / name} is not there") from None
                    continue
                with tempfile.TemporaryFile() as archive:
                    for chunk in stream:
                        archive.write(chunk)
                    archive.seek(0)
                    with tarfile.open(fileobj=archive) as tar:
                        # Only plain files and directories under `into` (no links, no paths
                        # out of it, no owners or modes beyond the safe ones).
                        tar.extractall(into, filter="data")

    def remove(self, name: str) -> list[str]:
        """Remove what this actuator started under `name` (a replica also loses its sensor),
        with their volumes; the names of the containers removed."""
        wanted = [*self.started(name), *self.started(f"sensor-{name}")]
        return self._remove(wanted)

    def remove_all(self) -> list[str]:
        """Remove every container this actuator started for the deployment."""
        return self._remove(self.started())

    def _remove(self, containers: list[Container]) -> list[str]:
        removed = []
        for container in containers:
            # Already gone is what was asked for.
            with (
                self._engine(f"remove container {container.name}"),
                contextlib.suppress(docker.errors.NotFound),
            ):
                container.remove(force=True, v=True)
            removed.append(container.name)
        return removed
