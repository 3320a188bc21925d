"""The shard keeper on real redis-server processes: a restarted replica rejoins its primary, a
restarted primary nobody replaced is appointed again, and one that came back with less than its
replica is not (docs/membership.md, M6); while the kill switch or shadow mode is on it changes
nothing and says what it would have done."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Awaitable, Callable

import pytest

from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import open_coordination_store, opened_coordination_store
from lazarus_lite.gates import ALL, KillSwitch, ShadowMode
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.shadow_report import KEEPER_DECISION, shadow_report
from lazarus_lite.shard_keeper import RATEQUEUE_SERVICE, ShardKeeper
from ratequeue import membership
from ratequeue.local_cluster import (
    LocalCluster,
    ShardNode,
    start_node,
    wait_for_replicas_in_sync,
)
from ratequeue.topology import Topology
from tests.etcd_topology import map_in_store, store_address_of


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


# What a node sends that changes it: INFO (the keeper's reads) is not among them.
CHANGING_COMMANDS = ("replicaof", "slaveof", "config", "set", "eval", "evalsha", "multi", "del")


def changing_commands_seen(node: ShardNode) -> dict[str, int]:
    """The calls of each state-changing command `node` served so far (MONITOR does not show
    REPLICAOF or CONFIG; INFO commandstats counts them)."""
    with node.client() as conn:
        stats = conn.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in CHANGING_COMMANDS
    }


class GatedKeeper:
    """A keeper with its own metrics over `cluster`'s store, kept across passes (it reports a
    withheld change once while it stays withheld), and the store's gates to switch."""

    def __init__(self, store: CoordinationStore) -> None:
        self.store = store
        self.metrics = ControllerMetrics()
        self.keeper = ShardKeeper(store, "test", "demote", metrics=self.metrics)
        self.kill_switch = KillSwitch(store.flags)
        self.shadow = ShadowMode(store.flags)

    def withheld(self, action: str, gate: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "lazarus_shard_keeper_withheld_total", {"action": action, "gate": gate}
        )
        return value or 0.0


def with_gated_keeper(
    cluster: LocalCluster, test: Callable[[GatedKeeper], Awaitable[None]]
) -> None:
    """Run `test` with a `GatedKeeper` on `cluster`'s store; every gate released afterwards."""

    async def run() -> None:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            gated = GatedKeeper(store)
            try:
                await test(gated)
            finally:
                await gated.kill_switch.set(ALL, False)
                await gated.shadow.set(ALL, False)

    asyncio.run(run())


@pytest.mark.parametrize("category", [ALL, "failover"])
def test_a_detached_listed_replica_stays_detached_while_the_kill_switch_is_on(
    start_cluster_on_suite_control: Callable[..., LocalCluster], category: str
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    replica = cluster.shards[0].replicas[0]

    async def test(gated: GatedKeeper) -> None:
        await gated.kill_switch.set(category, True, reason="maintenance of s0")
        with replica.client() as conn:
            conn.execute_command("REPLICAOF", "NO", "ONE")  # detached by hand
        before = changing_commands_seen(replica)
        done = await gated.keeper.run_once()
        assert any("would attach listed replica" in line and "kill switch" in line
                   for line in done), done  # fmt: skip
        assert await gated.keeper.run_once() == []  # reported once, not every pass
        assert changing_commands_seen(replica) == before
        assert replica.replication()["role"] == "master"
        assert gated.withheld("rejoin", "kill_switch") == 1
        await gated.kill_switch.set(category, False)
        done = await gated.keeper.run_once()
        assert any("rejoined" in line for line in done), done

    with_gated_keeper(cluster, test)
    wait_for_replicas_in_sync(cluster.shards[0].primary, [replica])


def test_a_restarted_primary_is_not_appointed_again_in_shadow_mode(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    primary = cluster.shards[0].primary

    async def test(gated: GatedKeeper) -> None:
        await gated.shadow.set(RATEQUEUE_SERVICE, True)
        epoch = (await map_in_store(cluster)).epoch
        primary.restart()
        before = changing_commands_seen(primary)
        done = await gated.keeper.run_once()
        assert any("would appoint" in line for line in done), done
        assert changing_commands_seen(primary) == before
        assert membership.is_parked(primary.replication())
        assert (await map_in_store(cluster)).epoch == epoch
        assert gated.withheld("reappoint", "shadow") == 1
        decisions = await gated.store.records.shadow_decisions(10)
        [decision] = [d for d in decisions if d["type"] == KEEPER_DECISION]
        assert decision["shard"] == "s0" and decision["primary_then"] == primary.name
        assert decision["action"].startswith("shard keeper: appoint")
        # Not judged against the primary answering again: no failure was decided.
        report = await shadow_report(gated.store.records, gated.store.topology)
        row = next(r for r in report if r["type"] == KEEPER_DECISION)
        assert row["afterwards"].startswith("not compared") and row["agrees"] is None
        await gated.shadow.set(RATEQUEUE_SERVICE, False)
        done = await gated.keeper.run_once()
        assert any("appointed again" in line for line in done), done
        assert (await map_in_store(cluster)).epoch > epoch

    with_gated_keeper(cluster, test)
    assert primary.replication()["role"] == "master"
