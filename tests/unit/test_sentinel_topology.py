"""The topology source that follows Redis Sentinel, where no sentinel is needed to tell: it never
writes the map (Sentinel picks the primaries), a store without a map gives none, and when no
sentinel answers it raises rather than guess (the client keeps the map it has).

Not for: following a real failover (tests/test_testbed_on_sentinel.py kills a primary).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from redis.exceptions import RedisError

from common.redis_processes import free_port
from ratequeue.errors import ManagedBySentinel
from ratequeue.sentinel_topology import SentinelTopologySource
from ratequeue.topology import NodeRef, Shard, Topology

T = TypeVar("T")

PRIMARY = NodeRef(name="p", host="127.0.0.1", port=7000)
MAP = Topology(epoch=3, shards=[Shard(id="s0", slots=(0, 16383), epoch=1, primary=PRIMARY)])


class FixedMap:
    """A base store holding one map (or none)."""

    def __init__(self, topology: Topology | None) -> None:
        self.topology = topology

    async def load(self) -> Topology | None:
        return self.topology


def nobody_listening() -> list[tuple[str, int]]:
    return [("127.0.0.1", free_port(("127.0.0.1",)))]


async def closed_after(source: SentinelTopologySource, call: Awaitable[T]) -> T:
    try:
        return await call
    finally:
        await source.aclose()


def test_it_refuses_to_change_the_map() -> None:
    source = SentinelTopologySource(FixedMap(MAP), nobody_listening())
    with pytest.raises(ManagedBySentinel):
        asyncio.run(closed_after(source, source.compare_and_set(3, MAP)))


def test_without_a_map_in_the_store_there_is_none_to_follow() -> None:
    source = SentinelTopologySource(FixedMap(None), nobody_listening())
    assert asyncio.run(closed_after(source, source.load())) is None


def test_when_no_sentinel_answers_it_raises_naming_the_shard() -> None:
    source = SentinelTopologySource(FixedMap(MAP), nobody_listening(), timeout=0.5)
    with pytest.raises(RedisError, match="no sentinel knows master s0"):
        asyncio.run(closed_after(source, source.load()))
