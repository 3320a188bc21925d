"""The shard map: which node is each shard's primary, in which epoch, for which slots.

The map lives in the control store as one JSON document. Every change is a compare-and-set on
the global `epoch`; readers watch for new epochs (`TopologySource`: what any store of the map
must do). `TopologyStore` keeps it in Redis: the change is announced on a pub/sub channel, and
its watch also rereads periodically, so a missed notification only delays a reader.

Each shard also carries the epoch in which its current primary was appointed; the same value is
written to that primary's `rq:fence` key, and queue writes carry it, so a node that is no longer
the primary of its shard's epoch refuses them.

Not for: choosing a new primary (that is the failover workflow's job).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import RedisError

from common.cancellation import stop_if_cancelled
from ratequeue.errors import EpochConflict
from ratequeue.slots import SLOT_COUNT

TOPOLOGY_KEY = "rq:topology"
TOPOLOGY_CHANNEL = "rq:topology:changed"
FENCE_KEY = "rq:fence"


class NodeRef(BaseModel):
    """A Redis node. `host` is where clients reach it; `peer_host` is where replicas, sensors
    and controllers reach it (the same node on a second address, so the two paths can be cut
    separately in partition experiments)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    host: str
    port: int = Field(gt=0, lt=65536)
    peer_host: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peer_address(self) -> str:
        return f"{self.peer_host or self.host}:{self.port}"


class HeldNode(NodeRef):
    """A former member held for forensics (`Shard.forensics`): the node, and when it was put
    there (unix seconds; None in a map written before it was recorded), so what is held can be
    bounded by age as well as by count."""

    held_at: float | None = None

    @classmethod
    def of(cls, node: NodeRef, at: float) -> HeldNode:
        return cls(**node.model_dump(include=set(NodeRef.model_fields)), held_at=at)

    def node(self) -> NodeRef:
        """The plain node, to list it again (as a replica)."""
        return NodeRef(**self.model_dump(exclude={"held_at"}))


class Lineage(BaseModel):
    """The replication stream of a shard's current primary, recorded when it was appointed.

    Offsets along one lineage are positions in one stream: a replica that reports `replid` at
    offset o holds the stream up to o; one that still reports `previous` at an offset at or below
    `since` holds a prefix of it (the part written before this primary was appointed)."""

    model_config = ConfigDict(extra="forbid")

    replid: str
    since: int = Field(ge=0, description="offset at which the primary was appointed")
    previous: str | None = Field(None, description="replication id it continued from")


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    slots: tuple[int, int] = Field(description="inclusive slot range")
    epoch: int = Field(ge=1, description="epoch in which the current primary was appointed")
    primary: NodeRef
    replicas: list[NodeRef] = Field(default_factory=list)
    replica_target: int | None = Field(
        None,
        ge=0,
        description="replicas the shard is kept at (recorded when it is created): a returning "
        "former member rejoins only below it (None: a map written before it was recorded; "
        "every returning member rejoins)",
    )
    forensics: list[HeldNode] = Field(
        default_factory=list,
        description="former members held out of service (bounded by the controllers' settings)",
    )
    status: Literal["ok", "failing_over", "escalated", "unwritable"] = Field(
        "ok", description="unwritable: no writable primary for longer than the controllers' bound"
    )
    lineage: Lineage | None = Field(
        None, description="the current primary's replication stream (None: not recorded)"
    )
    appointed_enqueues: int | None = Field(
        None, ge=0, description="enqueues the primary had applied when it was appointed"
    )


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=1)
    shards: list[Shard]

    @model_validator(mode="after")
    def _slots_cover_every_slot_once(self) -> Topology:
        ranges = sorted(shard.slots for shard in self.shards)
        expected = 0
        for low, high in ranges:
            if low != expected or high < low:
                raise ValueError(f"slot ranges must cover 0..{SLOT_COUNT - 1} without gaps")
            expected = high + 1
        if expected != SLOT_COUNT:
            raise ValueError(f"slot ranges must cover 0..{SLOT_COUNT - 1} without gaps")
        return self

    def shard_for_slot(self, slot: int) -> Shard:
        for shard in self.shards:
            if shard.slots[0] <= slot <= shard.slots[1]:
                return shard
        raise LookupError(slot)  # unreachable: the validator guarantees full coverage

    def shard(self, shard_id: str) -> Shard:
        for shard in self.shards:
            if shard.id == shard_id:
                return shard
        raise KeyError(shard_id)

    def next_with(self, changed: Shard) -> Topology:
        """The next epoch of this map, with `changed` in place of the shard of the same id."""
        return Topology(
            epoch=self.epoch + 1,
            shards=[changed if s.id == changed.id else s for s in self.shards],
        )


def even_slot_ranges(count: int) -> list[tuple[int, int]]:
    """Split the slot space into `count` contiguous ranges of (nearly) equal size."""
    bounds = [round(i * SLOT_COUNT / count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]


# Sets the topology only if the stored epoch is the expected one; publishes the change.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
local epoch = 0
if current then epoch = tonumber(cjson.decode(current)['epoch']) end
if epoch ~= tonumber(ARGV[1]) then return epoch end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return -1
"""


class TopologySource(Protocol):
    """What a store of the shard map does, whatever keeps it (Redis today, etcd next)."""

    async def load(self) -> Topology | None:
        """The stored map, or None before the first one is stored."""
        ...

    async def compare_and_set(self, expected_epoch: int, topology: Topology) -> None:
        """Store `topology` if the stored epoch is `expected_epoch` (0: none stored yet); else
        EpochConflict naming the epoch found."""
        ...

    def watch(self, *, after_epoch: int = 0, refresh_every: float = 2.0) -> AsyncIterator[Topology]:
        """Each map newer than the last one delivered (or than `after_epoch`), as soon as the
        store tells of it and at the latest `refresh_every` seconds later. An unreachable store
        delays the next map; it never ends the iteration."""
        ...


class TopologyStore:
    """Reads, compare-and-sets and watches the topology in the Redis control store."""

    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._cas = control.register_script(_COMPARE_AND_SET)

    async def load(self) -> Topology | None:
        raw = await self._control.get(TOPOLOGY_KEY)
        return None if raw is None else Topology.model_validate_json(raw)

    async def compare_and_set(self, expected_epoch: int, topology: Topology) -> None:
        """Store `topology` if the stored epoch is `expected_epoch` (0: none stored yet)."""
        found = await self._cas(
            keys=[TOPOLOGY_KEY, TOPOLOGY_CHANNEL],
            args=[expected_epoch, topology.model_dump_json(), str(topology.epoch)],
        )
        if int(found) != -1:
            raise EpochConflict(expected_epoch, int(found))

    async def watch(
        self, *, after_epoch: int = 0, refresh_every: float = 2.0
    ) -> AsyncIterator[Topology]:
        last = after_epoch
        pubsub = self._control.pubsub()
        try:
            while True:
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(TOPOLOGY_CHANNEL)
                    # A notice ends the wait at once; none within `refresh_every`, a reread.
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=refresh_every)
                    topology = await self.load()
                except (RedisError, OSError):
                    stop_if_cancelled()
                    # The store is away: subscribe afresh (a notice may be lost meanwhile; the
                    # reread after it returns finds the newer map).
                    await pubsub.aclose()
                    pubsub = self._control.pubsub()
                    await asyncio.sleep(refresh_every)
                    continue
                if topology is not None and topology.epoch > last:
                    last = topology.epoch
                    yield topology
        finally:
            await pubsub.aclose()


# The header of `GET /v1/topology` saying when (Unix time, seconds) the answering API process
# began routing by the epoch it answers with.
EPOCH_TAKEN_AT_HEADER = "Ratequeue-Epoch-Taken-At"


def topology_json(topology: Topology) -> dict:
    return json.loads(topology.model_dump_json())
