"""Where a run's undelivered acknowledged writes are when it ends: each is looked for on every
node of the shard that acknowledged it (primary, replicas, held former primaries, from the maps
before and after the fault), in the number's queue and leases (`ratequeue.scripts.held_ids`).
Held somewhere, it is undelivered but still there (a shard left without a primary delivers
nothing: `two_shards_down` under Lazarus escalates and promotes nobody); held on no node that
answered, it is gone; with a node of its shard unread, it is not known. A node is asked once,
with no retry and short timeouts: a dead or paused one is not known in about `timeout`, not
after redis-py's retries with backoff (seconds per node).

Not for: judging loss (`acknowledged_lost` counts every acknowledged write not delivered,
held or not), or looking into a node for anything else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import redis
from pydantic import BaseModel, Field
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratequeue.scripts import held_ids
from ratequeue.topology import NodeRef, Topology


class Whereabouts(BaseModel):
    """The undelivered writes of a run, by where they were found at its end."""

    held: int = Field(0, description="held by at least one node of their shard")
    gone: int = Field(0, description="held by no node of their shard, every node read")
    unknown: int = Field(0, description="held by no node read, some node of the shard unread")
    held_on: dict[str, int] = Field(
        default_factory=dict, description="node name -> how many of them it holds"
    )
    unread: dict[str, str] = Field(
        default_factory=dict, description="node name -> why it could not be read"
    )

    def describe(self) -> str:
        """`14 held (s1-replica1 14), 0 gone`, and what is not known and why."""
        on = ", ".join(f"{name} {count}" for name, count in sorted(self.held_on.items()))
        text = f"{self.held} held" + (f" ({on})" if on else "") + f", {self.gone} gone"
        if self.unknown:
            text += f", {self.unknown} not known"
        if self.unread:
            text += "; unread: " + ", ".join(
                f"{n} ({why})" for n, why in sorted(self.unread.items())
            )
        return text


def shard_nodes(topologies: Iterable[Topology]) -> dict[str, list[NodeRef]]:
    """Per shard, every node any of `topologies` lists for it (by name, first address kept)."""
    nodes: dict[str, dict[str, NodeRef]] = defaultdict(dict)
    for topology in topologies:
        for shard in topology.shards:
            for node in [shard.primary, *shard.replicas, *shard.forensics]:
                nodes[shard.id].setdefault(node.name, node)
    return {shard: list(by_name.values()) for shard, by_name in nodes.items()}


def find_undelivered(
    undelivered: dict[str, tuple[str, str]], topologies: Iterable[Topology], timeout: float = 0.5
) -> Whereabouts:
    """Where each of `undelivered` (id -> (number, shard)) is held among its shard's nodes."""
    nodes = shard_nodes(topologies)
    numbers: dict[str, set[str]] = defaultdict(set)  # shard -> numbers to look at
    for number, shard in undelivered.values():
        numbers[shard].add(number)
    holders: dict[str, set[str]] = defaultdict(set)  # id -> names of the nodes holding it
    unread: dict[str, str] = {}
    for shard, shard_numbers in numbers.items():
        for node in nodes.get(shard, []):
            try:
                with redis.Redis(host=node.host, port=node.port, socket_timeout=timeout,
                                 socket_connect_timeout=timeout,
                                 retry=Retry(NoBackoff(), 0)) as conn:  # fmt: skip
                    for number in shard_numbers:
                        for message_id in held_ids(conn, number):
                            holders[message_id].add(node.name)
            except (redis.RedisError, OSError) as error:
                unread[node.name] = type(error).__name__
    found = Whereabouts(unread=unread)
    for message_id, (_, shard) in undelivered.items():
        if holders.get(message_id):
            found.held += 1
            for name in holders[message_id]:
                found.held_on[name] = found.held_on.get(name, 0) + 1
        elif any(n.name in unread for n in nodes.get(shard, [])) or shard not in nodes:
            found.unknown += 1
        else:
            found.gone += 1
    return found
