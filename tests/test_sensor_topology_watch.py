"""A sensor learns a new epoch from its topology source's watch (the control store's pub/sub,
or etcd's watch), not from polling; when the watch breaks it polls instead. Real redis-server
nodes, a real three-member etcd cluster, events on a real Redis event stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from detection.events import Event
from detection.sensor import Sensor, SensorConfig
from detection.streams import RedisEventStream
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import TOPOLOGY_KEY, Topology, TopologySource, TopologyStore
from tests.test_sensor import kill, peer, published

# A poll interval no test waits for: a new epoch seen within the test came from the watch.
NEVER = 3600.0


def promoted(topology: Topology, shard_id: str, new_primary: str) -> Topology:
    """The next epoch of `topology`, `new_primary` (a replica's name) primary of the shard."""
    shard = topology.shard(shard_id)
    chosen = next(r for r in shard.replicas if r.name == new_primary)
    replicas = [r for r in shard.replicas if r.name != new_primary] + [shard.primary]
    changed = shard.model_copy(
        update={"primary": chosen, "replicas": replicas, "epoch": topology.epoch + 1}
    )
    return topology.next_with(changed)


@pytest.fixture
def cluster(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return start_cluster(shards=1, replicas=2)


@pytest.fixture
async def control(cluster: LocalCluster) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(cluster.control.url, socket_timeout=2)
    yield connection
    await connection.aclose()


@pytest.fixture
async def etcd_client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdClientSettings(endpoints=etcd.endpoints)) as client:
        await client.delete("/", prefix=True)  # what an earlier test left
        yield client


async def move_to_etcd(control: aioredis.Redis, etcd_client: EtcdClient) -> EtcdTopologyStore:
    """The cluster's map taken out of the control store and published in etcd."""
    topology = Topology.model_validate_json(await control.get(TOPOLOGY_KEY))
    store = EtcdTopologyStore(etcd_client)
    await store.compare_and_set(0, topology)
    await control.delete(TOPOLOGY_KEY)
    return store


async def heartbeat_naming(cluster: LocalCluster, primary: str, timeout: float = 15) -> Event:
    """The first heartbeat published with `primary` as the watched primary."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in published(cluster, "SensorHeartbeat") if e.data["primary"] == primary]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no heartbeat watching {primary} in {timeout:g} s"
        await asyncio.sleep(0.05)


async def sensor_follows_a_promotion(
    cluster: LocalCluster, store: TopologySource, sensor: Sensor
) -> Event:
    """Run `sensor`, publish the promotion of the shard's second replica once the sensor
    watches the first primary, and return the sensor's first heartbeat naming the new one."""
    stop = asyncio.Event()
    running = asyncio.create_task(sensor.run(stop))
    try:
        await heartbeat_naming(cluster, "s0-primary")
        current = await store.load()
        assert current is not None
        await store.compare_and_set(current.epoch, promoted(current, "s0", "s0-replica2"))
        return await heartbeat_naming(cluster, "s0-replica2")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


def config(cluster: LocalCluster, **settings: object) -> SensorConfig:
    options: dict[str, object] = {"interval": 0.05, "heartbeat_every": 0.05,
                                  "topology_refresh": NEVER, "control_timeout": 0.5}  # fmt: skip
    options.update(settings)
    replica = cluster.shard("s0").replicas[0]
    return SensorConfig(control_url=cluster.control.url, replica=peer(replica), **options)  # type: ignore[arg-type]


async def test_a_sensor_on_redis_follows_a_new_primary_from_the_topology_watch(
    cluster: LocalCluster, control: aioredis.Redis
) -> None:
    store = TopologyStore(control)
    async with Sensor(config(cluster), RedisEventStream(control)) as sensor:
        heartbeat = await sensor_follows_a_promotion(cluster, store, sensor)

    assert heartbeat.data["shard_epoch"] == 2 and heartbeat.data["ok"] is True


async def test_a_sensor_on_etcd_follows_a_new_primary_from_the_topology_watch(
    cluster: LocalCluster, control: aioredis.Redis, etcd: EtcdCluster, etcd_client: EtcdClient
) -> None:
    store = await move_to_etcd(control, etcd_client)
    settings = config(cluster, etcd_endpoints=",".join(etcd.endpoints))
    async with Sensor(settings, RedisEventStream(control)) as sensor:
        heartbeat = await sensor_follows_a_promotion(cluster, store, sensor)

    assert heartbeat.data["shard_epoch"] == 2 and heartbeat.data["ok"] is True


class WatchThatBreaks:
    """The control store's topology, whose watch fails at once every time (a store that
    cannot stream, a bug in a watch): what a sensor must survive by polling."""

    def __init__(self, store: TopologyStore) -> None:
        self._store = store
        self.load = store.load
        self.compare_and_set = store.compare_and_set

    async def watch(self, *, after_epoch: int = 0, refresh_every: float = 2.0) -> AsyncIterator:
        raise ConnectionError("this watch always breaks")
        yield  # an async generator, like every watch


async def test_a_sensor_whose_topology_watch_breaks_learns_a_new_epoch_by_polling(
    cluster: LocalCluster, control: aioredis.Redis
) -> None:
    broken = WatchThatBreaks(TopologyStore(control))
    settings = config(cluster, topology_refresh=0.1)
    async with Sensor(settings, RedisEventStream(control), topology=broken) as sensor:
        heartbeat = await sensor_follows_a_promotion(cluster, broken, sensor)

    assert heartbeat.data["shard_epoch"] == 2


async def first_published(cluster: LocalCluster, type: str, timeout: float) -> Event:
    deadline = time.monotonic() + timeout
    while not (found := published(cluster, type)):
        assert time.monotonic() < deadline, f"no {type} published in {timeout:g} s"
        await asyncio.sleep(0.05)
    return found[0]


async def test_a_sensor_on_etcd_without_its_quorum_reports_a_dead_primary_of_the_map_it_has(
    cluster: LocalCluster, control: aioredis.Redis, etcd: EtcdCluster, etcd_client: EtcdClient
) -> None:
    await move_to_etcd(control, etcd_client)
    settings = config(cluster, etcd_endpoints=",".join(etcd.endpoints))
    async with Sensor(settings, RedisEventStream(control)) as sensor:
        stop = asyncio.Event()
        running = asyncio.create_task(sensor.run(stop))
        try:
            await heartbeat_naming(cluster, "s0-primary")
            for member in etcd.members[:2]:  # one member left: no quorum, no read, no watch
                member.kill()
            kill(cluster.shard("s0").primary)
            down = await first_published(cluster, "RedisMasterDown", timeout=15)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)

    assert (down.shard, down.data["primary"], down.data["shard_epoch"]) == ("s0", "s0-primary", 1)
