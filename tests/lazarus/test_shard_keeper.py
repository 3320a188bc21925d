"""The shard keeper on real redis-server processes: a restarted replica rejoins its primary, a
restarted primary nobody replaced is appointed again, and one that came back with less than its
replica is not (docs/membership.md, M6)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable

from lazarus_lite.coordination.opening import open_coordination_store
from lazarus_lite.shard_keeper import ShardKeeper
from ratequeue import membership
from ratequeue.local_cluster import LocalCluster, start_node, wait_for_replicas_in_sync
from ratequeue.topology import Topology
from tests.etcd_topology import store_address_of


def keep_once(cluster: LocalCluster) -> tuple[list[str], Topology]:
    """One round of the keeper, on the store `cluster`'s map is in (`store_address_of`): what
    it did, and the map after it."""

    async def run() -> tuple[list[str], Topology]:
        store = open_coordination_store(store_address_of(cluster))
        try:
            keeper = ShardKeeper(store, "test", "demote")
            done = await keeper.run_once()
            topology = await store.topology.load()
            assert topology is not None
            return done, topology
        finally:
            await store.aclose()

    return asyncio.run(run())


def write_some(cluster: LocalCluster, count: int) -> None:
    primary = cluster.shards[0].primary
    with primary.client() as conn:
        for _ in range(count):
            conn.incr(membership.BARRIER_KEY)
    wait_for_replicas_in_sync(primary, cluster.shards[0].replicas)


def test_a_restarted_replica_rejoins_its_primary(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    replica = cluster.shards[0].replicas[0]
    replica.restart()
    assert membership.is_parked(replica.replication())
    done, _ = keep_once(cluster)
    assert any("rejoined" in line for line in done), done
    wait_for_replicas_in_sync(cluster.shards[0].primary, [replica])


def test_a_restarted_primary_nobody_replaced_is_appointed_again_in_a_new_epoch(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    primary = cluster.shards[0].primary
    primary.restart()
    assert membership.is_parked(primary.replication())
    done, topology = keep_once(cluster)
    assert any("appointed again" in line for line in done), done
    assert primary.replication()["role"] == "master"
    shard = topology.shard("s0")
    assert shard.epoch == topology.epoch > 1 and shard.status == "ok"
    with primary.client() as conn:
        assert conn.get("rq:fence") == str(shard.epoch).encode()
    wait_for_replicas_in_sync(primary, cluster.shards[0].replicas)


def test_a_primary_that_came_back_with_less_than_its_replica_is_not_appointed(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    primary = cluster.shards[0].primary
    primary.stop()
    shutil.rmtree(primary.workdir / primary.name / "appendonlydir")  # its disk lost it all
    primary.restart()
    done, topology = keep_once(cluster)
    assert any("not appointed again" in line for line in done), done
    assert membership.is_parked(primary.replication())
    assert topology.shard("s0").status == "escalated"
    with cluster.shards[0].replicas[0].client() as conn:
        assert int(conn.get(membership.BARRIER_KEY)) >= 5  # the replica kept what it had


def test_a_restarted_primary_is_not_appointed_while_a_replica_cannot_say_what_it_holds(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
    primary.restart()
    replica.signal(signal.SIGSTOP)
    try:
        done, topology = keep_once(cluster)
    finally:
        replica.signal(signal.SIGCONT)
    assert any("cannot tell" in line for line in done), done
    assert membership.is_parked(primary.replication())
    done, topology = keep_once(cluster)  # once it answers and holds no more, it is
    assert primary.replication()["role"] == "master"
    assert topology.shard("s0").status == "ok"


def test_a_node_attached_but_not_listed_is_parked(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    primary = cluster.shards[0].primary
    stray = start_node("stray", "replica", "s0", primary.workdir)
    try:
        stray.attach_to(primary)
        wait_for_replicas_in_sync(primary, [stray])
        done, _ = keep_once(cluster)
        assert any("attached but not listed" in line for line in done), done
        assert membership.is_parked(stray.replication())
    finally:
        stray.stop()


def test_a_primary_appointed_with_fewer_replicas_than_now_listed_asks_for_k_again(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # Appointed when the shard had no replica to ask for (k = 0); one is listed now.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1, min_replicas=0)
    primary = cluster.shards[0].primary
    with primary.client() as conn:
        assert conn.config_get("min-replicas-to-write")["min-replicas-to-write"] == "0"
    done, _ = keep_once(cluster)
    assert any("accepts writes with 1 replicas" in line for line in done), done
    with primary.client() as conn:
        assert conn.config_get("min-replicas-to-write")["min-replicas-to-write"] == "1"
    assert keep_once(cluster)[0] == []  # nothing more to do
