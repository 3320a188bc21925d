"""The deployment an experiment runs against: the embedded local testbed, or an existing one
described by `--target FILE` (API URL, control store URL, controller URLs, and how each node is
reached: pid, container name or Gremlin target). A target file that sets `docker_deployment`
may name only the endpoints: its nodes are the deployment's containers on the local Docker
engine, found by their labels (`chaos.docker_targets`), replacements provisioned since included.

Redis roles follow the live topology (after a failover the primary is another node), so a
selector is resolved against the control store's shard map at the moment of the fault.
Not for: injecting faults (see `chaos.faults`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import redis
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from chaos.errors import TargetError
from chaos.experiments import STORE_NODE_ROLES, Selector
from chaos.faults.base import NodeTarget
from chaos.testbed import (
    AckMode,
    FailoverManager,
    TestbedState,
    provisioned_nodes,
    read_state,
    record_pid,
)
from common import input_files
from common.errors import EtcdUnreachable
from common.nodes import HTTP_ROLES, PEER_HOST, peer_host_of
from common.validation import HttpUrlText, RedisUrlText, describe_problems, quoted, validated
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import StoreAddress, opened_coordination_store
from ratequeue.sentinel_topology import SentinelTopologySource, parse_sentinel_addresses
from ratequeue.topology import Topology

if TYPE_CHECKING:
    from chaos.experiments import Experiment

T = TypeVar("T")
Backend = Literal["local", "docker", "gremlin"]


class DeploymentNode(NodeTarget):
    """A node of a deployment: how a fault backend reaches it, and its URL if it serves HTTP.
    Its port may be left out (0) for a node no fault addresses by port."""

    port: int = Field(0, ge=0, lt=65536)  # type: ignore[assignment]
    url: str | None = None
    command: list[str] | None = Field(
        None, description="the argv that boots it again on this machine (local stop and start)"
    )


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "local-testbed"
    environment: str = "dev"
    api: HttpUrlText
    control: RedisUrlText
    etcd_endpoints: str | None = Field(
        None,
        description="the etcd members' client URLs, comma-separated, when etcd is the "
        "coordination store (the event stream and record log stay on `control`)",
    )
    lazarus: list[HttpUrlText] = Field(default_factory=list)
    sentinels: list[str] = Field(
        default_factory=list,
        description="host:port of the Redis Sentinels, when they (not Lazarus) fail shards "
        "over: the map's primaries are the ones they name",
    )
    lazarus_token: str | None = Field(None, description="bearer token for approvals")
    ack: AckMode | None = Field(
        None, description="wait: enqueues acknowledged once a replica holds them; async: at once"
    )
    default_backend: Backend = "local"
    nodes: list[DeploymentNode] = Field(default_factory=list)
    testbed_dir: Path | None = Field(None, description="set for the embedded testbed")
    _discovered: set[str] = PrivateAttr(default_factory=set)
    docker_deployment: str | None = Field(
        None,
        description="the label ratequeue.deployment of its containers: nodes are discovered",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
    )

    def store_address(self) -> StoreAddress:
        """Where the deployment's coordination store is."""
        return StoreAddress.of(self.control, self.etcd_endpoints)

    @property
    def has_containers(self) -> bool:
        """Whether the docker backend can reach its nodes: discovered by label, or named."""
        return self.docker_deployment is not None or any(n.container for n in self.nodes)

    def unusable_backends(self, experiment: Experiment) -> list[str]:
        """The experiment's fault steps whose backend cannot act on this deployment, a
        sentence each naming the field (see `Experiment.unusable_backends`)."""
        return experiment.unusable_backends(
            self.default_backend, self.has_containers, f"deployment {self.name!r}"
        )

    @property
    def failover(self) -> FailoverManager:
        """Who fails its shards over."""
        return "sentinel" if self.sentinels else "lazarus"

    @field_validator("sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        if value:
            parse_sentinel_addresses(",".join(value))
        return value

    def refresh_nodes(self) -> None:
        """Pick up nodes started since: processes the local actuator started (replacement
        replicas), or the deployment's containers as they are now (addresses and roles from
        the live topology), next to the nodes the file lists."""
        if self.docker_deployment is not None:
            self._discover_containers()
        if self.testbed_dir is None:
            return
        known = {n.name for n in self.nodes}
        for extra in provisioned_nodes(self.testbed_dir):
            if extra.name not in known:
                # The supervisor's argv is the testbed's business, not a fault target's.
                fields = extra.model_dump(exclude={"program", "restart_command"})
                self.nodes.append(DeploymentNode(**fields, peer_host=PEER_HOST))

    def _discover_containers(self) -> None:
        from chaos.docker_targets import discover_nodes  # the Docker SDK only when asked for

        assert self.docker_deployment is not None
        try:
            topology: Topology | None = self.topology()
        except TargetError:
            topology = None  # the nodes are still targets; their roles are the labels'
        found = discover_nodes(self.docker_deployment, topology)
        # What the file lists stays its word; what an earlier discovery found is replaced by
        # what is found now (after a failover a node's role changed; a removed one is gone).
        listed = [n for n in self.nodes if n.name not in self._discovered]
        names = {n.name for n in listed}
        self._discovered = {n.name for n in found if n.name not in names}
        self.nodes = listed + [n for n in found if n.name in self._discovered]

    def node(self, name: str) -> DeploymentNode:
        self.refresh_nodes()
        for node in self.nodes:
            if node.name == name:
                return node
        raise TargetError(f"node {name} is not in deployment {self.name}")

    def on_store(self, use: Callable[[CoordinationStore], Awaitable[T]]) -> T:
        """`use` on the deployment's coordination store, opened for that call alone;
        TargetError when the store does not answer or its URL cannot be used (a
        ValidationError of what it holds is raised as is)."""

        async def call() -> T:
            async with opened_coordination_store(self.store_address(), timeout=3) as store:
                return await use(store)

        return self._answered(call)

    def _answered(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """`call` run to its end; TargetError when the control store does not answer."""
        try:
            return asyncio.run(call())
        except ValidationError:
            raise  # what the store holds, not the store: the caller says what it is
        except (redis.RedisError, EtcdUnreachable, ValueError) as error:  # ValueError: a bad URL
            raise store_unreachable(self.etcd_endpoints or self.control, error) from None

    def topology(self) -> Topology:
        """The shard map in the control store; TargetError if it cannot be read or used."""
        try:
            found = (
                self._answered(self._sentinel_topology)
                if self.sentinels
                else self.on_store(lambda store: store.topology.load())
            )
        except ValidationError as error:
            raise TargetError(
                f"the topology in the control store {self.control} is not one this version "
                f"reads: {describe_problems(error)}"
            ) from None
        if found is None:
            raise TargetError(f"no topology in the control store {self.control}")
        return found

    async def _sentinel_topology(self) -> Topology | None:
        addresses = parse_sentinel_addresses(",".join(self.sentinels))
        source = SentinelTopologySource.over_control_store(self.control, addresses)
        try:
            return await source.load()
        finally:
            await source.aclose()

    def record_pid(self, name: str, pid: int) -> None:
        """Node `name` runs as `pid` now (a fault restarted it): later faults reach that
        process, and for a testbed `testbed.json` says so too (for `status` and `down`)."""
        self.node(name).pid = pid
        if self.testbed_dir is not None:
            record_pid(self.testbed_dir, name, pid)

    def controller_urls(self) -> list[str]:
        return self.lazarus or [n.url for n in self.nodes if n.role == "lazarus" and n.url]

    def as_target(self, node: DeploymentNode) -> NodeTarget:
        fields = node.model_dump(exclude={"url", "command"})
        return NodeTarget(**{**fields, "port": node.port or 1})


def from_testbed(state: TestbedState, directory: Path) -> Deployment:
    nodes = [
        DeploymentNode(
            name=n.name,
            role=n.role,
            shard=n.shard,
            host=n.host,
            port=n.port,
            pid=n.pid,
            command=n.command,
            peer_host=peer_host_of(n.role),
            url=f"http://{n.host}:{n.port}" if n.role in HTTP_ROLES else None,
        )
        for n in state.nodes
    ]
    return Deployment(
        api=state.api,
        control=state.control,
        etcd_endpoints=state.etcd_endpoints,
        lazarus=state.lazarus,
        lazarus_token=state.lazarus_token,
        sentinels=state.sentinels,
        ack=state.ack,
        nodes=nodes,
        testbed_dir=directory,
    )


def store_unreachable(control: str, error: Exception) -> TargetError:
    """The TargetError for a control store that does not answer (a RedisError), or whose URL
    redis-py refuses (a ValueError)."""
    if isinstance(error, ValueError):
        return TargetError(f"the control store URL {control} cannot be used: {error}")
    return TargetError(f"the control store {control} is unreachable: {error}")


def load_deployment(path: Path) -> Deployment:
    """A target file (YAML or JSON), or a testbed's `testbed.json`."""
    if path.name.startswith("testbed.json"):
        return from_testbed(read_state(path, error=TargetError), path.parent)
    raw = input_files.load(
        path,
        expected="a deployment: a mapping with api, control and nodes",
        as_json=path.suffix not in {".yaml", ".yml"},
        error=TargetError,
    )
    return validated(Deployment, raw, str(path), error=TargetError)


class ShardChoice:
    """The shard a run acts on (one shard at a time), and a second one for `shard: other`."""

    def __init__(self, shard_ids: list[str], rng: random.Random, named: str | None = None) -> None:
        """`named`: the shard a step names outright; the run's shard is then that one."""
        if not shard_ids:
            raise TargetError("the topology has no shards")
        self.shard_ids = shard_ids
        self.chosen = named if named in shard_ids else rng.choice(shard_ids)
        others = [s for s in shard_ids if s != self.chosen]
        self.other = rng.choice(others) if others else None

    def shard_of(self, selector: Selector) -> str:
        """The shard a step's selector acts on; for a store node (no shard's own) the run's, its
        `shard` unused whatever it says, as the run's check of named shards leaves it unchecked."""
        return self.chosen if selector.role in STORE_NODE_ROLES else self.resolve(selector.shard)

    def resolve(self, wanted: str) -> str:
        if wanted in {"random", "same"}:
            return self.chosen
        if wanted == "other":
            if self.other is None:
                raise TargetError("'shard: other' needs at least two shards")
            return self.other
        if wanted not in self.shard_ids:
            # A run checks its steps' shards before it starts (`Experiment.unknown_shards`);
            # this is for a caller that did not (a CTK action with its own arguments).
            there = ", ".join(self.shard_ids)
            raise TargetError(f"no shard {quoted(wanted)} in this deployment (its shards: {there})")
        return wanted
