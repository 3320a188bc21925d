"""Putting a test cluster's topology into etcd, for tests whose API or controllers read it from
there: the one way the tests do it.

Not for: the topology store itself (`ratequeue.etcd_topology`), which this only calls.
"""

from __future__ import annotations

import asyncio

from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from lazarus_lite.coordination.opening import StoreAddress, opened_coordination_store
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import TOPOLOGY_KEY, Topology


async def publish_in_etcd(etcd: EtcdCluster, expected_epoch: int, topology: Topology) -> None:
    """`topology` written over epoch `expected_epoch`; over 0, into an emptied etcd (what an
    earlier test left goes)."""
    async with EtcdClient(EtcdClientSettings(endpoints=etcd.endpoints)) as client:
        if expected_epoch == 0:
            await client.delete("/", prefix=True)
        await EtcdTopologyStore(client).compare_and_set(expected_epoch, topology)


# The clusters whose map a test moved into etcd, with the members' endpoints (by the cluster's
# id; the cluster is kept with them so no other object takes its id meanwhile).
_MOVED: dict[int, tuple[LocalCluster, str]] = {}


def topology_moved_to_etcd(cluster: LocalCluster, etcd: EtcdCluster) -> Topology:
    """The cluster's topology moved from its control Redis into an emptied etcd: only etcd has
    it then, so whatever routes by it must be reading etcd's."""
    with cluster.control.client() as control:
        topology = Topology.model_validate_json(control.get(TOPOLOGY_KEY))
        control.delete(TOPOLOGY_KEY)
    asyncio.run(publish_in_etcd(etcd, 0, topology))
    _MOVED[id(cluster)] = (cluster, ",".join(etcd.endpoints))
    return topology


def store_address_of(cluster: LocalCluster) -> StoreAddress:
    """Where the cluster's coordination store is: etcd once its map was moved there (by
    `topology_moved_to_etcd`), else its control Redis."""
    moved = _MOVED.get(id(cluster))
    endpoints = moved[1] if moved is not None and moved[0] is cluster else None
    return StoreAddress.of(cluster.control.url, endpoints)


async def map_in_store(cluster: LocalCluster) -> Topology:
    """The cluster's map as its controllers read it: from the store `store_address_of` names."""
    async with opened_coordination_store(store_address_of(cluster)) as store:
        topology = await store.topology.load()
    assert topology is not None, f"no map in {store_address_of(cluster)}"
    return topology


def map_in_store_of(cluster: LocalCluster) -> Topology:
    """`map_in_store`, for a caller outside an event loop."""
    return asyncio.run(map_in_store(cluster))
