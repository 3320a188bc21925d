"""A local Redis cluster of the ratequeue shape: a control store and shards of one primary and
its replicas, each a real `redis-server` (`common.redis_processes`), with the shard operations
set-up code needs synchronously: a shard node boots parked (`start_node`), is appointed primary
of an epoch, attached to its primary, and reports its replication lineage; `LocalCluster` starts
them all and publishes the first topology in the order the membership argument needs. Test
fixtures, benchmarks and the local testbed start their nodes here.

Not for: deciding topology changes (the controllers do), or managing processes in general.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

import redis

from common.errors import RedisStartError
from common.nodes import SHARD_ROLES, Role
from common.redis_processes import RedisProcess, StartOptions, start_redis, stop_together
from ratequeue.membership import (
    boot_arguments,
    memory_limit,
    required_replicas,
    settled_lineage,
    write_quorum,
)
from ratequeue.topology import (
    FENCE_KEY,
    TOPOLOGY_CHANNEL,
    TOPOLOGY_KEY,
    Lineage,
    NodeRef,
    Shard,
    Topology,
    even_slot_ranges,
)


@dataclass(eq=False)
class ShardNode(RedisProcess):
    """A Redis node of the testbed, with what a shard does with it."""

    def ref(self) -> NodeRef:
        return NodeRef(name=self.name, host=self.host, port=self.port, peer_host=self.peer_host)

    def restart(
        self,
        *,
        replica_of: RedisProcess | None = None,
        timeout: float = 10.0,
        empty: bool = False,
    ) -> None:
        """Start the node again on the same port and data directory (a shard node boots
        parked, however it was started), then, with `replica_of`, attach it to that primary;
        `empty`: with its data files deleted first."""
        if self.role in SHARD_ROLES:  # no shard node ever boots writable (docs/membership.md)
            self.boot_args = tuple(boot_arguments(memory_limit(self.boot_args)))
        super().restart(timeout=timeout, empty=empty)
        if replica_of is not None:
            self.attach_to(replica_of)

    def attach_to(self, primary: RedisProcess) -> None:
        """Follow `primary` (its peer address). Only for a node listed as its replica."""
        with self.client() as conn:
            conn.execute_command("REPLICAOF", primary.peer_host, str(primary.port))

    def appoint(self, epoch: int, *, min_replicas: int) -> None:
        """Make this node the primary of a shard epoch (`ratequeue.membership.appoint_primary`,
        for synchronous set-up code)."""
        with self.client() as conn:
            if conn.info("replication").get("role") != "master":
                conn.execute_command("REPLICAOF", "NO", "ONE")
            conn.config_set("min-replicas-to-write", 0)
            conn.set(FENCE_KEY, str(epoch))
            for name, value in write_quorum(min_replicas).items():
                conn.config_set(name, value)

    def lineage(self) -> Lineage | None:
        return settled_lineage(self.replication())


def start_node(
    name: str,
    role: Role,
    shard: str | None,
    workdir: Path,
    *,
    maxmemory: str | None = None,
    extra_args: tuple[str, ...] = (),
    **options: Unpack[StartOptions],
) -> ShardNode:
    """Start one node of the testbed and return when it answers PING. A shard node (role
    `primary` or `replica`) boots parked: it follows nothing and refuses writes until appointed
    or attached; with `maxmemory` it refuses writes at that size (it never evicts). `extra_args`
    follow the boot arguments (a later flag wins over an earlier one).

    `detached` nodes outlive this Python process (the testbed); others die with it."""
    boot_args = (*boot_arguments(maxmemory), *extra_args) if role in SHARD_ROLES else extra_args
    return start_redis(
        name, role, shard, workdir, boot_args=boot_args, node_type=ShardNode, **options
    )


def wait_for_replicas_in_sync(
    primary: ShardNode, replicas: list[ShardNode], timeout: float = 15.0
) -> None:
    """Return once every replica reports `master_link_status:up` and the primary counts all of
    them in `WAIT` after a write. After a diskless sync the primary streams writes to a replica
    only from its first REPLCONF ACK, up to a second later; a WAIT before that falls short."""
    deadline = time.monotonic() + timeout
    pending = list(replicas)
    while pending:
        pending = [r for r in pending if r.replication().get("master_link_status") != "up"]
        if pending:
            if time.monotonic() > deadline:
                names = ", ".join(r.name for r in pending)
                raise RedisStartError(f"replicas not in sync after {timeout:.0f} s: {names}")
            time.sleep(0.02)
    with primary.client() as conn:
        while True:
            try:
                conn.incr("rq:barrier")
                if int(conn.execute_command("WAIT", len(replicas), 100)) >= len(replicas):
                    return
            except redis.ResponseError as error:
                # An appointed primary refuses writes until its replicas acknowledge it.
                if not str(error).startswith("NOREPLICAS"):
                    raise
            if time.monotonic() > deadline:
                raise RedisStartError(f"{primary.name}: replicas never acknowledged a write")
            time.sleep(0.02)


@dataclass
class ShardNodes:
    id: str
    primary: ShardNode
    replicas: list[ShardNode]


@dataclass
class LocalCluster:
    """A control store and shards of real redis-server processes. Use as a context manager, or
    call `stop()`; nodes not detached are also stopped at interpreter exit."""

    workdir: Path
    control: RedisProcess
    shards: list[ShardNodes] = field(default_factory=list)
    min_replicas: int = 1
    """What clients' `WAIT` requires: an appointed primary with fewer replicas refuses writes."""

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        shards: int = 3,
        replicas: int = 2,
        min_replicas: int = 1,
        detached: bool = False,
        maxmemory: str | None = None,
        node_args: tuple[str, ...] = (),
    ) -> LocalCluster:
        """`maxmemory`: each shard node's memory limit (`membership.boot_arguments`); None for
        none (benchmarks load data sets of a gigabyte). `node_args`: flags every shard node
        boots with after its boot arguments."""
        workdir.mkdir(parents=True, exist_ok=True)
        control = start_redis("control", "control", None, workdir, detached=detached)
        cluster = cls(workdir=workdir, control=control, min_replicas=min_replicas)
        try:
            for index in range(shards):
                shard_id = f"s{index}"
                primary = start_node(
                    f"{shard_id}-primary", "primary", shard_id, workdir, detached=detached,
                    maxmemory=maxmemory, extra_args=node_args,
                )  # fmt: skip
                shard = ShardNodes(shard_id, primary, [])
                cluster.shards.append(shard)
                for r in range(replicas):
                    shard.replicas.append(
                        start_node(
                            f"{shard_id}-replica{r + 1}", "replica", shard_id, workdir,
                            detached=detached, maxmemory=maxmemory, extra_args=node_args,
                        )
                    )  # fmt: skip
            cluster.publish_initial_topology()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def nodes(self) -> list[RedisProcess]:
        return [self.control] + [
            node for shard in self.shards for node in [shard.primary, *shard.replicas]
        ]

    def shard(self, shard_id: str) -> ShardNodes:
        return next(s for s in self.shards if s.id == shard_id)

    def initial_topology(self, lineages: dict[str, Lineage] | None = None) -> Topology:
        ranges = even_slot_ranges(len(self.shards))
        return Topology(
            epoch=1,
            shards=[
                Shard(
                    id=shard.id,
                    slots=slots,
                    epoch=1,
                    primary=shard.primary.ref(),
                    replicas=[r.ref() for r in shard.replicas],
                    replica_target=len(shard.replicas),
                    lineage=(lineages or {}).get(shard.id),
                    appointed_enqueues=0,  # appointed empty
                )
                for shard, slots in zip(self.shards, ranges, strict=True)
            ],
        )

    def publish_initial_topology(self) -> Topology:
        """Epoch 1, in the order the membership argument needs: appoint each primary (fence and
        lineage), store the map listing every replica, and only then attach the replicas."""
        for shard in self.shards:
            shard.primary.appoint(
                1, min_replicas=required_replicas(self.min_replicas, len(shard.replicas))
            )
        topology = self.initial_topology()
        with self.control.client() as conn:
            conn.set(TOPOLOGY_KEY, topology.model_dump_json())
            conn.publish(TOPOLOGY_CHANNEL, "1")
        # The first sync of an empty primary goes through disk. A diskless sync puts its replica
        # online only at the replica's first REPLCONF ACK after the primary has reaped the RDB
        # child, which the replica's immediate ACK usually precedes; its next comes a second
        # later, and `WAIT` falls short until then. Through disk the replica is online once the
        # file is sent. Every later sync (a replica rejoining, a failover) is diskless as booted.
        diskless: dict[str, str] = {}
        for shard in self.shards:
            with shard.primary.client() as conn:
                diskless[shard.id] = conn.config_get("repl-diskless-sync")["repl-diskless-sync"]
                conn.config_set("repl-diskless-sync", "no")
            for replica in shard.replicas:
                replica.attach_to(shard.primary)
        for shard in self.shards:
            wait_for_replicas_in_sync(shard.primary, shard.replicas)
            with shard.primary.client() as conn:
                conn.config_set("repl-diskless-sync", diskless[shard.id])
        # A new primary's replication id is final once its first replica synced: record it now
        # (a controller's shard keeper would, too).
        lineages = {shard.id: shard.primary.lineage() for shard in self.shards}
        topology = self.initial_topology({k: v for k, v in lineages.items() if v is not None})
        with self.control.client() as conn:
            conn.set(TOPOLOGY_KEY, topology.model_dump_json())
        return topology

    def stop(self) -> None:
        stop_together(self.nodes())

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
