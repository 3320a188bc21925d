"""The shard map as Redis Sentinel has it (`TopologySource` for a deployment whose failovers
Sentinel makes, not the Lazarus controllers): the shards, their slots and members come from the
map published at set-up (the `base` source, the control store); each shard's primary is the node
Sentinel names for the master of the shard's id (`SENTINEL MASTER`, the answer with the highest
`config-epoch` among the sentinels: one that has not yet heard of a failover answers with an
older one). `watch` wakes on each sentinel's `+switch-master` and rereads periodically.

The map's epoch is the base epoch plus the sum of the masters' config epochs, so every switch
Sentinel makes is a newer map. Each shard keeps the base's shard epoch: Sentinel sets no fence
(`rq:fence` is replicated, so every node holds the same value) and so a primary cut off on the
clients' side keeps accepting writes until they route elsewhere: the difference the Sentinel
experiments measure.

Not for: changing the map (Sentinel does; `compare_and_set` refuses), or starting sentinels
(`common.sentinel_processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ratequeue.errors import ManagedBySentinel
from ratequeue.topology import NodeRef, Shard, Topology, TopologySource, TopologyStore

log = logging.getLogger(__name__)
SWITCH_MASTER = "+switch-master"


def parse_sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port` → [(host, port)]; ValueError naming what is wrong."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port (a port 1-65535)")
        addresses.append((host, int(port)))
    if not addresses:
        raise ValueError("no sentinel address given")
    return addresses


class SentinelTopologySource:
    """Follows Sentinel's choice of primary for each shard of the `base` map."""

    def __init__(
        self,
        base: TopologySource,
        sentinels: Sequence[tuple[str, int]],
        *,
        timeout: float = 1.0,
        owned: Sequence[aioredis.Redis] = (),
    ) -> None:
        """`owned`: connections `aclose` closes with the sentinels' (the base's store)."""
        self._base = base
        self._owned = list(owned)
        self._sentinels = [
            aioredis.Redis(
                host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            for host, port in sentinels
        ]

    @classmethod
    def over_control_store(
        cls, control_url: str, sentinels: Sequence[tuple[str, int]], *, timeout: float = 1.0
    ) -> SentinelTopologySource:
        """Following Sentinel over the map in the control Redis at `control_url`."""
        control = aioredis.Redis.from_url(
            control_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return cls(TopologyStore(control), sentinels, timeout=timeout, owned=[control])

    async def aclose(self) -> None:
        for connection in [*self._sentinels, *self._owned]:
            await connection.aclose()

    async def load(self) -> Topology | None:
        """The base map with Sentinel's primaries; raises RedisError if no sentinel answers
        for a shard (the caller keeps the map it has)."""
        base = await self._base.load()
        if base is None:
            return None
        masters = await asyncio.gather(*(self._master(s.id) for s in base.shards))
        shards = [
            _with_primary(shard, ip, port)
            for shard, (ip, port, _) in zip(base.shards, masters, strict=True)
        ]
        epoch = base.epoch + sum(config_epoch for _, _, config_epoch in masters)
        return Topology(epoch=epoch, shards=shards)

    async def _master(self, name: str) -> tuple[str, int, int]:
        """(ip, port, config-epoch) of master `name` per the most informed sentinel."""
        answers = await asyncio.gather(
            *(_ask_master(s, name) for s in self._sentinels), return_exceptions=True
        )
        known = [a for a in answers if isinstance(a, tuple)]
        if not known:
            errors = "; ".join(str(a) for a in answers)
            raise RedisError(f"no sentinel knows master {name}: {errors}")
        return max(known, key=lambda answer: answer[2])

    async def compare_and_set(self, expected_epoch: int, topology: Topology) -> None:
        raise ManagedBySentinel("Sentinel chooses the primaries of this deployment")

    async def watch(
        self, *, after_epoch: int = 0, refresh_every: float = 2.0
    ) -> AsyncIterator[Topology]:
        last = after_epoch
        switched = asyncio.Event()
        listeners = [
            asyncio.create_task(_listen(s, switched, refresh_every), name="sentinel-switches")
            for s in self._sentinels
        ]
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(switched.wait(), refresh_every)
                switched.clear()
                try:
                    topology = await self.load()
                except (RedisError, OSError) as error:
                    log.debug("sentinel topology not read: %s", error)
                    continue
                if topology is not None and topology.epoch > last:
                    last = topology.epoch
                    yield topology
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)


async def _ask_master(sentinel: aioredis.Redis, name: str) -> tuple[str, int, int]:
    state: dict[str, Any] = await sentinel.sentinel_master(name)
    return str(state["ip"]), int(state["port"]), int(state["config-epoch"])


async def _listen(sentinel: aioredis.Redis, switched: asyncio.Event, pause: float) -> None:
    """Set `switched` on each `+switch-master` this sentinel publishes, reconnecting after an
    error (a switch told meanwhile is found by the periodic reread)."""
    while True:
        pubsub = sentinel.pubsub()
        try:
            await pubsub.subscribe(SWITCH_MASTER)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    switched.set()
        except (RedisError, OSError):
            await asyncio.sleep(pause)
        finally:
            await pubsub.aclose()


def _with_primary(shard: Shard, ip: str, port: int) -> Shard:
    """`shard` with the member at `port` as its primary and the others as replicas. Ports are
    unique on this machine's loopback addresses, and Sentinel may name a member by either of
    them (its client or its peer address), so the port says which member it is."""
    members = [shard.primary, *shard.replicas]
    primary = next((m for m in members if m.port == port), None)
    if primary is None:  # a node the base map does not list: route to it as Sentinel names it
        primary = NodeRef(name=f"{ip}:{port}", host=ip, port=port)
    replicas = [m for m in members if m.port != port]
    return shard.model_copy(update={"primary": primary, "replicas": replicas})
