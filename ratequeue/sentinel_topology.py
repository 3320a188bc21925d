"""The shard map as Redis Sentinel has it (`TopologySource` for a deployment whose failovers
Sentinel makes, not the Lazarus controllers): the shards, their slots and members come from the
map published at set-up (the `base` source, the control store); each shard's primary is the
node a majority of the sentinels name for the master of the shard's id. `watch` wakes on each
sentinel's `+switch-master` and rereads periodically; with the control store away it follows
Sentinel over the map it last read (`load` then raises, so a health check sees the store away).

Which primary, and why it is safe to route to it:

- The address comes from `SENTINEL GET-MASTER-ADDR-BY-NAME`, never from `SENTINEL MASTER`'s
  ip and port: the sentinel leading a failover raises the master's `config-epoch` when the
  promoted replica confirms its role, but moves `SENTINEL MASTER`'s address only at
  `+switch-master`, after the replicas are reconfigured; in between, only
  GET-MASTER-ADDR-BY-NAME names the new primary with the new epoch.
- A claim (config-epoch, address) counts only when a majority of all the sentinels configured
  (2 of 3) make it; one sentinel, informed or not, decides nothing.
- Per shard the source keeps the claim it followed and moves only to a claim of a higher
  config-epoch: a sentinel that has not heard of a failover, or a majority read before the news
  spread, never sends a shard back to its old primary.
- The map's epoch is the base epoch plus the kept config-epochs: every change of any shard's
  primary raises it (its shard's config-epoch rose), and it never goes down (a base map that
  lost a shard still gives a higher epoch than the last map issued, nor does an older base map
  an overlapping load read late).
- That epoch is per API process: each worker (`ratequeue.workers`) runs its own source and
  follows Sentinel itself, so two workers may number the same map differently; nothing compares
  epochs across processes (Sentinel writes no map to compare with).

Each shard keeps the base's shard epoch: Sentinel sets no fence (`rq:fence` is replicated, so
every node holds the same value) and so a primary cut off on the clients' side keeps accepting
writes until they route elsewhere: the difference the Sentinel experiments measure.

Not for: changing the map (Sentinel does; `compare_and_set` refuses), or starting sentinels
(`common.sentinel_processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.cancellation import cancel_until_done, stop_if_cancelled
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


@dataclass(frozen=True, order=True)
class MasterClaim:
    """What one sentinel says of one master: the config-epoch of its current configuration and
    the address it gives for the master (GET-MASTER-ADDR-BY-NAME)."""

    config_epoch: int
    host: str
    port: int


# One sentinel's answer: master name → its claim (a master it does not know is absent).
SentinelAnswer = dict[str, MasterClaim]


def majority(sentinels: int) -> int:
    return sentinels // 2 + 1


def agreed_claim(claims: Sequence[MasterClaim], sentinels: int) -> MasterClaim | None:
    """The claim a majority of the `sentinels` configured make, else None."""
    counted = Counter(claims).most_common(1)
    if counted and counted[0][1] >= majority(sentinels):
        return counted[0][0]
    return None


class FollowedPrimaries:
    """Per shard, the claim followed (agreed by a majority, never replaced by one of a lower or
    equal config-epoch), and the maps built from them (their epoch never goes down)."""

    def __init__(self, sentinels: int) -> None:
        self.sentinels = sentinels
        self.kept: dict[str, MasterClaim] = {}
        self._issued: Topology | None = None

    def decided(self, names: Sequence[str], answers: Sequence[SentinelAnswer]) -> bool:
        """Whether `answers` already give a majority's claim for every master in `names`."""
        return all(self._agreed(name, answers) is not None for name in names)

    def observe(self, names: Sequence[str], answers: Sequence[SentinelAnswer]) -> None:
        """Follow each master's agreed claim when it is newer than the one kept."""
        for name in names:
            agreed = self._agreed(name, answers)
            kept = self.kept.get(name)
            if agreed is None or (kept is not None and agreed.config_epoch <= kept.config_epoch):
                if agreed is not None and kept is not None and agreed != kept:
                    log.warning("master %s: %s ignored, %s followed (not newer)", name, agreed,
                                kept)  # fmt: skip
                continue
            self.kept[name] = agreed

    def _agreed(self, name: str, answers: Sequence[SentinelAnswer]) -> MasterClaim | None:
        return agreed_claim([a[name] for a in answers if name in a], self.sentinels)

    def topology(self, base: Topology) -> Topology:
        """`base` with each shard's followed primary; RedisError naming a shard none is agreed
        for yet."""
        missing = [s.id for s in base.shards if s.id not in self.kept]
        if missing:
            raise RedisError(
                f"no majority of the {self.sentinels} sentinels agrees on master "
                f"{', '.join(missing)}"
            )
        shards = [_with_primary(shard, self.kept[shard.id]) for shard in base.shards]
        epoch = base.epoch + sum(self.kept[s.id].config_epoch for s in base.shards)
        issued = self._issued
        if issued is not None and epoch <= issued.epoch:
            # A new base map with fewer shards lowers the sum: a changed map still rises.
            epoch = issued.epoch if shards == issued.shards else issued.epoch + 1
        self._issued = Topology(epoch=epoch, shards=shards)
        return self._issued


class SentinelLink(Protocol):
    """One sentinel, as the source asks it."""

    address: str  # host:port, as a health check names it

    async def claims(self, names: Sequence[str]) -> SentinelAnswer:
        """Its claim for each master of `names` it knows; raises if it does not answer."""
        ...

    async def follow_switches(self, switched: asyncio.Event, pause: float) -> None:
        """Set `switched` at each `+switch-master` it publishes, for ever."""
        ...

    async def ping(self) -> None:
        """Returns when it answers; raises if it does not."""
        ...

    async def aclose(self) -> None: ...


class RedisSentinelLink:
    """A real sentinel at (host, port)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address = f"{host}:{port}"
        self._redis = aioredis.Redis(
            host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # Its own connection for the events, with no read timeout: a subscription is idle
        # between failovers, and a read timeout would drop it (and the event told meanwhile).
        self._events = aioredis.Redis(host=host, port=port, socket_connect_timeout=timeout)

    async def claims(self, names: Sequence[str]) -> SentinelAnswer:
        # One round trip. Per master the config-epoch is asked before the address: should the
        # sentinel's state move between the two, the pair is (old epoch, new address), which is
        # never followed over the kept claim, never (new epoch, old address).
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("SENTINEL", "MASTER", name)
            pipe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        replies = await pipe.execute(raise_on_error=False)
        answer: SentinelAnswer = {}
        for index, name in enumerate(names):
            state, address = replies[2 * index], replies[2 * index + 1]
            if isinstance(state, Exception) or isinstance(address, Exception) or not address:
                continue  # a master this sentinel does not know
            answer[name] = MasterClaim(
                config_epoch=int(_text(_fields(state)["config-epoch"])),
                host=_text(address[0]),
                port=int(_text(address[1])),
            )
        return answer

    async def follow_switches(self, switched: asyncio.Event, pause: float) -> None:
        """Reconnects after an error (a switch told meanwhile is found by the periodic
        reread)."""
        while True:
            pubsub = self._events.pubsub()
            try:
                await pubsub.subscribe(SWITCH_MASTER)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        switched.set()
            except (RedisError, OSError):
                stop_if_cancelled()
                await asyncio.sleep(pause)
            finally:
                await pubsub.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._events.aclose()


class SentinelTopologySource:
    """Follows the primary a majority of the sentinels name for each shard of the `base` map."""

    def __init__(
        self,
        base: TopologySource,
        links: Sequence[SentinelLink],
        *,
        timeout: float = 1.0,
        owned: Sequence[aioredis.Redis] = (),
    ) -> None:
        """`timeout`: the longest wait for the sentinels' answers (one slow sentinel is waited
        for only while the others do not agree); `owned`: connections `aclose` closes with
        the sentinels' (the base's store)."""
        self._base = base
        self._links = list(links)
        self._timeout = timeout
        self._owned = list(owned)
        self.followed = FollowedPrimaries(len(self._links))
        self._last_base: Topology | None = None

    @classmethod
    def over_control_store(
        cls, control_url: str, sentinels: Sequence[tuple[str, int]], *, timeout: float = 1.0
    ) -> SentinelTopologySource:
        """Following Sentinel over the map in the control Redis at `control_url`."""
        control = aioredis.Redis.from_url(
            control_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        links = [RedisSentinelLink(host, port, timeout) for host, port in sentinels]
        return cls(TopologyStore(control), links, timeout=timeout, owned=[control])

    async def aclose(self) -> None:
        for link in self._links:
            await link.aclose()
        for connection in self._owned:
            await connection.aclose()

    async def load(self) -> Topology | None:
        """The base map with the followed primaries; raises RedisError while no majority of
        the sentinels agrees on a shard's first primary (the caller keeps the map it has)."""
        return await self._follow(self._newest_base(await self._base.load()))

    def _newest_base(self, base: Topology | None) -> Topology | None:
        """`base`, or the newer map an overlapping load read meanwhile: an older map read
        late never replaces it (it would be issued at a higher epoch than the newer one)."""
        if base is None:
            return None
        if self._last_base is None or base.epoch >= self._last_base.epoch:
            self._last_base = base
        return self._last_base

    async def _follow(self, base: Topology | None) -> Topology | None:
        if base is None:
            return None
        names = [shard.id for shard in base.shards]
        self.followed.observe(names, await self._answers(names))
        # Another load may have read a newer map while the sentinels were asked.
        newest = self._newest_base(base)
        assert newest is not None
        return self.followed.topology(newest)

    async def _answers(self, names: Sequence[str]) -> list[SentinelAnswer]:
        """The sentinels' answers, returned as soon as a majority agrees on every master (a
        slow or paused sentinel is not waited for), else when all answered or `timeout`."""
        asked = [asyncio.ensure_future(link.claims(names)) for link in self._links]
        answers: list[SentinelAnswer] = []
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    for next_answer in asyncio.as_completed(asked):
                        try:
                            answers.append(await next_answer)
                        except (RedisError, OSError) as error:
                            log.debug("a sentinel did not answer: %s", error)
                            continue
                        if self.followed.decided(names, answers):
                            break
        finally:
            for task in asked:
                task.cancel()
            await asyncio.gather(*asked, return_exceptions=True)
        return answers

    async def _load_even_without_the_store(self) -> Topology | None:
        """As `load`, but with the control store away the base map last read is used, so a
        promotion Sentinel makes meanwhile is still followed (`load` itself raises then: the
        API's health check says the store is unreachable)."""
        try:
            base = await self._base.load()
        except (RedisError, OSError) as error:
            if self._last_base is None:
                raise
            log.debug("control store away (%s): the last map read is followed", error)
            base = self._last_base
        else:
            base = self._newest_base(base) or self._last_base
        return await self._follow(base)

    async def base_reachable(self) -> bool:
        """Whether the store of the base map answers (within `timeout`), the sentinels aside."""
        try:
            await asyncio.wait_for(self._base.load(), self._timeout)
        except Exception:  # whatever the store raises, it did not answer
            return False
        return True

    async def silent_sentinels(self) -> list[str]:
        """The addresses of the sentinels that do not answer a PING within `timeout`."""

        async def answers(link: SentinelLink) -> bool:
            try:
                await asyncio.wait_for(link.ping(), self._timeout)
            except (RedisError, OSError, TimeoutError):
                return False
            return True

        answered = await asyncio.gather(*(answers(link) for link in self._links))
        return [link.address for link, ok in zip(self._links, answered, strict=True) if not ok]

    @property
    def sentinel_count(self) -> int:
        return len(self._links)

    async def compare_and_set(self, expected_epoch: int, topology: Topology) -> None:
        raise ManagedBySentinel("Sentinel chooses the primaries of this deployment")

    async def watch(
        self, *, after_epoch: int = 0, refresh_every: float = 2.0
    ) -> AsyncIterator[Topology]:
        last = after_epoch
        switched = asyncio.Event()
        listeners = [
            asyncio.create_task(link.follow_switches(switched, refresh_every),
                                name="sentinel-switches")
            for link in self._links
        ]  # fmt: skip
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(switched.wait(), refresh_every)
                switched.clear()
                try:
                    topology = await self._load_even_without_the_store()
                except (RedisError, OSError) as error:
                    log.debug("sentinel topology not read: %s", error)
                    continue
                if topology is not None and topology.epoch > last:
                    last = topology.epoch
                    yield topology
        finally:
            await cancel_until_done(listeners)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(state: object) -> dict[str, object]:
    """SENTINEL MASTER's fields by name, as redis-py gives them (a dict, parsed) or as the
    server sends them (a flat list of names and values)."""
    if isinstance(state, dict):
        return {_text(key): value for key, value in state.items()}
    assert isinstance(state, list), f"SENTINEL MASTER answered {state!r}"
    return {_text(key): value for key, value in zip(state[::2], state[1::2], strict=True)}


def _with_primary(shard: Shard, claim: MasterClaim) -> Shard:
    """`shard` with the member `claim` names as its primary and the others as replicas.
    Sentinel names a member by the address it reached it on (its client or its peer
    address); a port no other member has also names it."""
    members = [shard.primary, *shard.replicas]
    on_port = [m for m in members if m.port == claim.port]
    named = [m for m in on_port if claim.host in (m.host, m.peer_host)]
    chosen = named or (on_port if len(on_port) == 1 else [])
    if chosen:
        primary = chosen[0]
    else:  # a node the base map does not list: route to it as Sentinel names it
        primary = NodeRef(name=f"{claim.host}:{claim.port}", host=claim.host, port=claim.port)
    replicas = [m for m in members if m is not primary]
    return shard.model_copy(update={"primary": primary, "replicas": replicas})
