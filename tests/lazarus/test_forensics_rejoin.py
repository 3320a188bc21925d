"""Former members held for forensics, on real redis-server processes: one that answers again is
copied (when the rules say so) and rejoins the current primary as a listed replica; one still
dead stays held; what is held, and the copies, stay within their bound (a count and an age)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.redis_processes import free_port
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.forensics import ForensicsRules
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.steps.ratequeue_promotion import fence_node
from ratequeue import membership
from ratequeue.local_cluster import LocalCluster, ShardNode, wait_for_replicas_in_sync
from ratequeue.topology import TOPOLOGY_KEY, HeldNode, NodeRef, Topology


def keep_once(cluster: LocalCluster, rules: ForensicsRules) -> tuple[list[str], Topology]:
    async def run() -> tuple[list[str], Topology]:
        store = RedisCoordinationStore.from_url(cluster.control.url)
        try:
            keeper = ShardKeeper(store, "test", "demote", forensics=rules)
            done = await keeper.run_once()
            return done, topology_of(cluster)
        finally:
            await store.aclose()

    return asyncio.run(run())


def topology_of(cluster: LocalCluster) -> Topology:
    with cluster.control.client() as conn:
        return Topology.model_validate_json(conn.get(TOPOLOGY_KEY))


def store(cluster: LocalCluster, topology: Topology) -> None:
    with cluster.control.client() as conn:
        conn.set(TOPOLOGY_KEY, topology.model_dump_json())


def node(cluster: LocalCluster, name: str) -> ShardNode:
    return next(n for n in cluster.nodes() if n.name == name and isinstance(n, ShardNode))


def fail_over_by_hand(cluster: LocalCluster, held_at: float | None = None) -> str:
    """What the failover workflow leaves behind when shard s0's primary died: its first replica
    appointed in a new epoch, the old primary (stopped) held for forensics. Returns its name."""
    topology = topology_of(cluster)
    shard = topology.shard("s0")
    old, new = node(cluster, shard.primary.name), node(cluster, shard.replicas[0].name)
    old.stop()
    epoch = topology.epoch + 1
    new.appoint(epoch, min_replicas=0)
    store(cluster, topology.next_with(shard.model_copy(update={
        "primary": shard.replicas[0],
        "replicas": shard.replicas[1:],
        "forensics": [*shard.forensics, HeldNode.of(shard.primary, held_at or time.time())],
        "epoch": epoch,
        "lineage": new.lineage(),
    })))  # fmt: skip
    return old.name


def write_some(cluster: LocalCluster, count: int) -> None:
    shard = topology_of(cluster).shard("s0")
    primary = node(cluster, shard.primary.name)
    with primary.client() as conn:
        for _ in range(count):
            conn.incr(membership.BARRIER_KEY)
    wait_for_replicas_in_sync(primary, [node(cluster, r.name) for r in shard.replicas])


def copies(directory: Path) -> list[Path]:
    """The shard's copies, oldest first (each is named `node@unix-seconds`)."""
    found = (directory / "s0").iterdir() if (directory / "s0").exists() else []
    return sorted(found, key=lambda copy: float(copy.name.partition("@")[2]))


def test_a_former_primary_that_answers_again_is_copied_and_rejoins_the_new_primary(
    start_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()  # with its boot arguments: it answers parked
    rules = ForensicsRules(copy_dir=tmp_path / "forensics")

    done, topology = keep_once(cluster, rules)

    shard = topology.shard("s0")
    assert any(f"former member {old} rejoined" in line for line in done), done
    assert [r.name for r in shard.replicas] == [old] and shard.forensics == []
    primary = node(cluster, shard.primary.name)
    assert membership.points_at(node(cluster, old).replication(), primary.peer_host, primary.port)
    (copy,) = copies(tmp_path / "forensics")
    assert copy.name.startswith(f"{old}@")
    assert (copy / "dump.rdb").stat().st_size > 0 and (copy / "appendonlydir").is_dir()
    with node(cluster, old).client() as conn:
        assert int(conn.get(membership.BARRIER_KEY)) >= 5  # it holds the shard's data again


def test_a_former_primary_still_dead_stays_held(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)

    done, topology = keep_once(cluster, ForensicsRules())

    assert [n.name for n in topology.shard("s0").forensics] == [old], done
    assert topology.shard("s0").replicas == []


def test_a_returning_node_is_not_rejoined_when_the_settings_say_no(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()

    keep_once(cluster, ForensicsRules(rejoin=False))

    assert [n.name for n in topology_of(cluster).shard("s0").forensics] == [old]
    assert membership.is_parked(node(cluster, old).replication())


def test_a_returning_node_stays_parked_until_its_hold_time_is_over(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    old = fail_over_by_hand(cluster, held_at=time.time())
    node(cluster, old).restart()

    keep_once(cluster, ForensicsRules(hold_seconds=3600))
    assert [n.name for n in topology_of(cluster).shard("s0").forensics] == [old]
    assert membership.is_parked(node(cluster, old).replication())

    keep_once(cluster, ForensicsRules(hold_seconds=0))
    assert [r.name for r in topology_of(cluster).shard("s0").replicas] == [old]


def test_the_forensics_list_keeps_the_newest_within_its_count_and_age(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    topology = topology_of(cluster)
    now = time.time()
    dead = [  # nobody listens on these ports
        HeldNode.of(NodeRef(name=f"gone{i}", host="127.0.0.1", port=free_port()), now - age)
        for i, age in enumerate([10_000, 50, 40, 30, 20])
    ]
    store(cluster, topology.next_with(topology.shard("s0").model_copy(update={"forensics": dead})))

    done, after = keep_once(cluster, ForensicsRules(keep=3, max_age=1_000))

    assert [n.name for n in after.shard("s0").forensics] == ["gone2", "gone3", "gone4"], done
    assert sum("beyond the bound" in line for line in done) == 2


def test_more_returns_than_the_bound_leave_as_many_copies_as_the_bound(
    start_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    rules = ForensicsRules(keep=2, copy_dir=tmp_path / "forensics")
    returned = []
    for _ in range(3):  # the two nodes take turns: each failover's old primary comes back
        old = fail_over_by_hand(cluster)
        node(cluster, old).restart()
        done, topology = keep_once(cluster, rules)
        assert any("rejoined" in line for line in done), done
        returned.append(old)

    assert len(copies(tmp_path / "forensics")) == 2
    assert [c.name.partition("@")[0] for c in copies(tmp_path / "forensics")] == returned[1:]
    assert topology.shard("s0").forensics == [] and len(topology.shard("s0").replicas) == 1
    with node(cluster, returned[-1]).client() as conn:
        assert conn.info("replication")["master_link_status"] == "up"


def test_a_former_primary_listed_before_its_resync_is_never_the_failover_candidate(
    start_cluster: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old primary applied writes nobody acknowledged; it comes back, is listed, and the new
    # primary dies before it could follow it. A failover now reads it among the listed replicas:
    # what it applied must not outrank the replica that holds the write the new primary acked.
    cluster = start_cluster(shards=1, replicas=2)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    topology = topology_of(cluster)
    shard = topology.shard("s0")
    store(cluster, topology.next_with(shard.model_copy(update={"appointed_enqueues": 5})))
    keep_once(cluster, ForensicsRules())  # the other replica follows the new primary
    write_some(cluster, 1)  # acknowledged: on the new primary and its replica
    node(cluster, old).restart()
    with node(cluster, old).client() as conn:  # what it held beyond the acknowledged stream
        conn.config_set("replica-read-only", "no")
        for _ in range(3):
            conn.incr(membership.BARRIER_KEY)
        conn.config_set("replica-read-only", "yes")

    async def primary_died(node: object, primary: object) -> None:
        raise ConnectionError("the new primary died before the returning node followed it")

    monkeypatch.setattr(membership, "attach", primary_died)
    done, topology = keep_once(cluster, ForensicsRules())
    shard = topology.shard("s0")
    assert old in [r.name for r in shard.replicas], done

    async def fence_listed() -> list[membership.ReplicaPosition]:
        fenced = [await fence_node(r) for r in shard.replicas]
        return [membership.ReplicaPosition(f.name, f.replid or "", f.offset or 0, f.enqueues)
                for f in fenced]  # fmt: skip

    best, _ = membership.most_complete_replica(
        asyncio.run(fence_listed()),
        shard.lineage,
        listed=len(shard.replicas),
        min_replicas=1,
        appointed_enqueues=shard.appointed_enqueues,
    )
    (follower,) = [r.name for r in shard.replicas if r.name != old]
    assert best.name == follower
