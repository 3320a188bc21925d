"""The shard map kept in etcd (`TopologySource` on a consensus store): one key holds the JSON
document; a compare-and-set on the epoch is a transaction comparing the key's mod_revision with
the one read alongside the document, and `watch` follows an etcd watch on the key (no polling),
which `common.etcd_client` resumes on another member when the one streaming it dies.

Not for: the map's model (`ratequeue.topology`), the Redis store of it (`TopologyStore`), or the
rest of the coordination store (`lazarus_lite.coordination.etcd_backend`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from common.cancellation import stop_if_cancelled
from common.errors import EtcdHistoryCompacted, EtcdOutcomeUnknown, EtcdUnreachable
from common.etcd_client import Compare, EtcdClient, KeyValue, Put
from ratequeue.errors import EpochConflict
from ratequeue.topology import Topology

ETCD_TOPOLOGY_KEY = "/ratequeue/topology"
# Lost compare races in a row before the compare-and-set gives up with the epoch it found;
# each round re-reads, so a loser normally leaves on its first EpochConflict.
_MAX_ROUNDS = 10


def _epoch_of(found: KeyValue | None) -> int:
    return 0 if found is None else Topology.model_validate_json(found.value).epoch


class EtcdTopologyStore:
    """Reads, compare-and-sets and watches the topology under one etcd key."""

    def __init__(self, client: EtcdClient, key: str = ETCD_TOPOLOGY_KEY) -> None:
        self._client = client
        self._key = key
        # The key as last read here or by a caller (`seen`), with its map's epoch: a
        # compare-and-set on that epoch compares against its mod_revision without reading it
        # again; the transaction's compare says whether it is still current.
        self._seen: tuple[int, KeyValue] | None = None

    def seen(self, found: KeyValue | None) -> None:
        """The key as a caller's read found it (a transaction that read it with other keys)."""
        self._seen = None if found is None else (_epoch_of(found), found)

    @property
    def key(self) -> str:
        """The key holding the map (for a transaction that reads it with other keys)."""
        return self._key

    async def load(self) -> Topology | None:
        found = await self._client.get(self._key)
        if found is None:
            self._seen = None
            return None
        topology = Topology.model_validate_json(found.value)
        self._seen = (topology.epoch, found)
        return topology

    async def compare_and_set(self, expected_epoch: int, topology: Topology) -> None:
        """Store `topology` if the stored epoch is `expected_epoch` (0: none stored yet). A write
        whose answer was lost is resolved by reading the key again: our document there means it
        applied (then or on a later round: a proposal in flight may commit after the read); the
        revision we compared against still there means it did not (and is sent again); anything
        else is someone else's newer map (EpochConflict). The first round compares against
        the key as last read (`load`, `seen`) when its epoch is `expected_epoch`: a failover
        step has just read it, and a stale one fails the compare and is read again."""
        document = topology.model_dump_json().encode()
        answer_lost = False
        known = (
            self._seen[1] if self._seen is not None and self._seen[0] == expected_epoch else None
        )
        for _ in range(_MAX_ROUNDS):
            if known is not None:
                found, known = known, None
            else:
                found = await self._client.get(self._key)
            if answer_lost and found is not None and found.value == document:
                return  # the write whose answer was lost committed after the read back
            epoch = _epoch_of(found)
            if epoch != expected_epoch:
                raise EpochConflict(expected_epoch, epoch)
            read_at = 0 if found is None else found.mod_revision
            unchanged = Compare(key=self._key, target="mod_revision", op="==", operand=read_at)
            try:
                result = await self._client.txn(
                    [unchanged], [Put(key=self._key, value=document)], check=False
                )
            except EtcdOutcomeUnknown:
                answer_lost = True
                after = await self._client.get(self._key)
                if after is not None and after.value == document:
                    return
                if (0 if after is None else after.mod_revision) == read_at:
                    continue
                raise EpochConflict(expected_epoch, _epoch_of(after)) from None
            if result.succeeded:
                return
        raise EpochConflict(expected_epoch, _epoch_of(await self._client.get(self._key)))

    async def watch(
        self, *, after_epoch: int = 0, refresh_every: float = 2.0
    ) -> AsyncIterator[Topology]:
        """Each newer map as the etcd watch tells of it. The watch starts right after the
        revision of a read, so no change between the read and the watch is missed; when no
        member streams (no quorum) or the history to resume from was compacted, it reads again
        `refresh_every` seconds later and watches anew."""
        last = after_epoch
        while True:
            try:
                read = await self._client.get_range(self._key)
            except EtcdUnreachable:
                stop_if_cancelled()
                await asyncio.sleep(refresh_every)
                continue
            if read.kvs:
                topology = Topology.model_validate_json(read.kvs[0].value)
                if topology.epoch > last:
                    last = topology.epoch
                    yield topology
            changes = self._client.watch(self._key, start_revision=read.revision + 1)
            try:
                async with contextlib.aclosing(changes):
                    async for change in changes:
                        if change.type != "put":
                            continue
                        topology = Topology.model_validate_json(change.kv.value)
                        if topology.epoch > last:
                            last = topology.epoch
                            yield topology
            except (EtcdUnreachable, EtcdHistoryCompacted):
                stop_if_cancelled()
                await asyncio.sleep(refresh_every)
