"""How the topology source that follows Redis Sentinel routes, from tables of what each sentinel
answers: a primary is followed only when a majority of the sentinels name it, a shard never goes
back to a claim of a lower config-epoch, the map's epoch rises at every change of a primary and
never falls, a slow sentinel is not waited for while the others agree, and the map is never
written (Sentinel picks the primaries).

Not for: what real sentinels answer during a failover (tests/test_sentinel_topology_source.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import pytest
from redis.exceptions import RedisError

from ratequeue.errors import ManagedBySentinel
from ratequeue.sentinel_topology import (
    MasterClaim,
    SentinelAnswer,
    SentinelTopologySource,
)
from ratequeue.topology import NodeRef, Shard, Topology

T = TypeVar("T")


def node(name: str, port: int) -> NodeRef:
    return NodeRef(name=name, host="127.0.0.1", port=port, peer_host="127.0.0.2")


OLD = {"s0": node("s0-primary", 7000), "s1": node("s1-primary", 7100)}
NEW = {"s0": node("s0-replica1", 7001), "s1": node("s1-replica1", 7101)}
MAP = Topology(
    epoch=3,
    shards=[
        Shard(id="s0", slots=(0, 8191), epoch=1, primary=OLD["s0"], replicas=[NEW["s0"]]),
        Shard(id="s1", slots=(8192, 16383), epoch=1, primary=OLD["s1"], replicas=[NEW["s1"]]),
    ],
)


def claim(config_epoch: int, member: NodeRef) -> MasterClaim:
    """As Sentinel names a member: by its peer address (the one it monitors)."""
    return MasterClaim(config_epoch, member.peer_host or member.host, member.port)


class FixedMap:
    """A base store holding one map (or none)."""

    def __init__(self, topology: Topology | None) -> None:
        self.topology = topology

    async def load(self) -> Topology | None:
        return self.topology


class TableSentinel:
    """A sentinel that answers from a table (set `answer` between loads), never answers
    (`silent`), or refuses the connection (`down`)."""

    def __init__(self, answer: SentinelAnswer | None = None, *, silent: bool = False) -> None:
        self.answer = answer or {}
        self.silent = silent
        self.down = False
        self.address = f"127.0.0.1:{26379 + id(self) % 1000}"

    async def ping(self) -> None:
        await self.claims([])

    async def claims(self, names: Sequence[str]) -> SentinelAnswer:
        if self.silent:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionRefusedError("sentinel down")
        return {name: c for name, c in self.answer.items() if name in names}

    async def follow_switches(self, switched: asyncio.Event, pause: float) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


def all_old() -> SentinelAnswer:
    return {"s0": claim(0, OLD["s0"]), "s1": claim(0, OLD["s1"])}


def sentinels(*answers: SentinelAnswer) -> list[TableSentinel]:
    return [TableSentinel(dict(a)) for a in answers]


def source_over(links: list[TableSentinel], base: Topology | None = MAP,
                timeout: float = 30.0) -> SentinelTopologySource:  # fmt: skip
    return SentinelTopologySource(FixedMap(base), links, timeout=timeout)


async def loads(source: SentinelTopologySource, count: int = 1) -> Topology | None:
    found = None
    for _ in range(count):
        found = await asyncio.wait_for(source.load(), 10)
    return found


def run(call: Awaitable[T]) -> T:
    return asyncio.run(call)


def primaries(topology: Topology | None) -> dict[str, str]:
    assert topology is not None
    return {shard.id: shard.primary.name for shard in topology.shards}


def test_the_primaries_a_majority_names_are_routed_to() -> None:
    links = sentinels(all_old(), all_old(), {"s0": claim(1, NEW["s0"]), "s1": claim(0, OLD["s1"])})
    found = run(loads(source_over(links)))
    assert primaries(found) == {"s0": "s0-primary", "s1": "s1-primary"}


def test_one_sentinel_naming_a_newer_primary_alone_moves_nothing() -> None:
    # The leader of a failover knows first; one sentinel is no majority.
    links = sentinels(all_old(), all_old(), all_old())
    source = source_over(links)
    first = run(loads(source))
    links[0].answer["s0"] = claim(1, NEW["s0"])
    again = run(loads(source))
    assert primaries(again) == primaries(first) and again is not None and first is not None
    assert again.epoch == first.epoch


def test_a_newer_primary_two_of_three_name_is_followed_and_the_epoch_rises() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    source = source_over(links)
    first = run(loads(source))
    for link in links[:2]:
        link.answer["s0"] = claim(1, NEW["s0"])
    after = run(loads(source))
    assert primaries(after) == {"s0": "s0-replica1", "s1": "s1-primary"}
    assert after is not None and first is not None and after.epoch > first.epoch
    shard = after.shard("s0")
    assert shard.epoch == 1  # the base's: Sentinel sets no fence of its own
    assert {r.name for r in shard.replicas} == {"s0-primary"}


def test_a_shard_never_goes_back_to_a_claim_of_a_lower_config_epoch() -> None:
    newer = {"s0": claim(2, NEW["s0"]), "s1": claim(0, OLD["s1"])}
    links = sentinels(newer, newer, newer)
    source = source_over(links)
    first = run(loads(source))
    # A majority answering from before the failover (restarted, or read before the news
    # spread) while s1 really fails over: s1 moves, s0 stays where it was.
    stale = {"s0": claim(1, OLD["s0"]), "s1": claim(1, NEW["s1"])}
    for link in links[:2]:
        link.answer = dict(stale)
    after = run(loads(source))
    assert primaries(after) == {"s0": "s0-replica1", "s1": "s1-replica1"}
    assert after is not None and first is not None and after.epoch > first.epoch


def test_an_equal_config_epoch_naming_another_address_changes_nothing() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    source = source_over(links)
    first = run(loads(source))
    for link in links:
        link.answer["s0"] = claim(0, NEW["s0"])
    after = run(loads(source))
    assert primaries(after) == primaries(first)
    assert after is not None and first is not None and after.epoch == first.epoch


def test_the_map_epoch_rises_at_every_change_of_any_shard_and_never_falls() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    source = source_over(links)
    epochs = [run(loads(source)).epoch]  # type: ignore[union-attr]
    steps = [{"s0": claim(1, NEW["s0"])}, {"s1": claim(2, NEW["s1"])},
             {"s0": claim(3, OLD["s0"])}]  # fmt: skip
    for step in steps:
        for link in links:
            link.answer.update(step)
        epochs.append(run(loads(source)).epoch)  # type: ignore[union-attr]
    assert epochs == sorted(set(epochs)), epochs
    assert primaries(run(loads(source))) == {"s0": "s0-primary", "s1": "s1-replica1"}


def test_a_base_map_with_fewer_shards_still_gives_a_higher_epoch() -> None:
    newer = {"s0": claim(0, OLD["s0"]), "s1": claim(5, NEW["s1"])}
    links = sentinels(newer, newer, newer)
    base = FixedMap(MAP)
    source = SentinelTopologySource(base, links, timeout=30)
    first = run(loads(source))
    whole = MAP.shards[0].model_copy(update={"slots": (0, 16383)})
    base.topology = Topology(epoch=4, shards=[whole])
    after = run(loads(source))
    assert after is not None and first is not None and after.epoch > first.epoch


def test_a_silent_sentinel_is_not_waited_for_while_the_other_two_agree() -> None:
    links = [*sentinels(all_old(), all_old()), TableSentinel(silent=True)]
    # With a 30 s timeout, waiting for the silent one would outlast the 10 s the load gets.
    found = run(loads(source_over(links, timeout=30)))
    assert primaries(found) == {"s0": "s0-primary", "s1": "s1-primary"}


def test_with_one_sentinel_answering_the_first_map_is_refused_naming_the_shards() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    links[0].down = links[1].down = True
    with pytest.raises(RedisError, match="no majority of the 3 sentinels agrees on master s0, s1"):
        run(loads(source_over(links)))


def test_with_one_sentinel_answering_the_followed_primaries_are_kept() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    source = source_over(links)
    first = run(loads(source))
    links[0].down = links[1].down = True
    links[2].answer["s0"] = claim(4, NEW["s0"])
    assert run(loads(source)) == first


def test_a_primary_sentinel_names_outside_the_map_is_routed_to_as_named() -> None:
    stranger = MasterClaim(1, "10.0.0.9", 7999)
    links = sentinels(*[{"s0": stranger, "s1": claim(0, OLD["s1"])}] * 3)
    shard = run(loads(source_over(links))).shard("s0")  # type: ignore[union-attr]
    assert (shard.primary.host, shard.primary.port) == ("10.0.0.9", 7999)
    assert {r.name for r in shard.replicas} == {"s0-primary", "s0-replica1"}


def test_it_refuses_to_change_the_map() -> None:
    source = source_over(sentinels(all_old()))
    with pytest.raises(ManagedBySentinel):
        run(source.compare_and_set(3, MAP))


def test_without_a_map_in_the_store_there_is_none_to_follow() -> None:
    assert run(loads(source_over(sentinels(all_old()), base=None))) is None


class MapsInTurn:
    """A base store answering each load with the next of `maps`."""

    def __init__(self, *maps: Topology) -> None:
        self.maps = list(maps)

    async def load(self) -> Topology | None:
        return self.maps.pop(0)


class HeldSentinel(TableSentinel):
    """Answers its first question only once `release` is set, the others at once."""

    def __init__(self, answer: SentinelAnswer) -> None:
        super().__init__(answer)
        self.release = asyncio.Event()
        self.asked = 0

    async def claims(self, names: Sequence[str]) -> SentinelAnswer:
        self.asked += 1
        if self.asked == 1:
            await self.release.wait()
        return await super().claims(names)


def test_an_older_map_read_by_an_overlapping_load_never_outranks_the_newer_one() -> None:
    whole = Topology(epoch=4, shards=[MAP.shards[0].model_copy(update={"slots": (0, 16383)})])
    links = [HeldSentinel(all_old()) for _ in range(3)]
    source = SentinelTopologySource(MapsInTurn(MAP, whole), links, timeout=30)

    async def overlap() -> tuple[Topology | None, Topology | None]:
        older = asyncio.ensure_future(source.load())  # reads MAP, then waits for the sentinels
        while not all(link.asked for link in links):
            await asyncio.sleep(0)
        newer = await asyncio.wait_for(source.load(), 10)  # reads `whole`, answered at once
        for link in links:
            link.release.set()
        return await asyncio.wait_for(older, 10), newer

    late, newer = run(overlap())
    assert newer is not None and late is not None
    assert late.shards == newer.shards == [MAP.shards[0].model_copy(update={"slots": (0, 16383)})]
    assert late.epoch == newer.epoch


class StoreThatGoesAway(FixedMap):
    """Holds the map until `away` is set, then refuses every read."""

    away = False

    async def load(self) -> Topology | None:
        if self.away:
            raise ConnectionRefusedError("control store down")
        return self.topology


def test_with_the_control_store_away_the_watch_still_follows_a_promotion() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    store = StoreThatGoesAway(MAP)
    source = SentinelTopologySource(store, links, timeout=30)

    async def follow() -> Topology:
        first = await source.load()
        assert first is not None
        store.away = True
        for link in links:
            link.answer["s0"] = claim(1, NEW["s0"])
        with pytest.raises(ConnectionRefusedError):
            await source.load()  # the health check sees the store away
        watch = source.watch(after_epoch=first.epoch, refresh_every=0.05)
        try:
            return await asyncio.wait_for(anext(watch), 10)
        finally:
            await watch.aclose()

    assert primaries(run(follow())) == {"s0": "s0-replica1", "s1": "s1-primary"}


def test_health_names_a_sentinel_that_does_not_answer_and_the_store_apart() -> None:
    links = sentinels(all_old(), all_old(), all_old())
    links[1].down = True
    source = SentinelTopologySource(FixedMap(MAP), links, timeout=0.2)
    assert run(source.silent_sentinels()) == [links[1].address]
    assert run(source.base_reachable())


def test_health_says_the_store_is_away_while_every_sentinel_answers() -> None:
    store = StoreThatGoesAway(MAP)
    store.away = True
    source = SentinelTopologySource(store, sentinels(all_old(), all_old(), all_old()), timeout=0.2)
    assert not run(source.base_reachable())
    assert run(source.silent_sentinels()) == []
