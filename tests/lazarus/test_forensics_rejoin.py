"""Former members held for forensics, on real redis-server processes: one that answers again is
copied (when the rules say so) and rejoins the current primary as a listed replica; one still
dead stays held; what is held, and the copies, stay within their bound (a count and an age)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.redis_processes import free_port
from lazarus_lite import shard_keeper
from lazarus_lite.actuators import LocalProcessActuator
from lazarus_lite.coordination.opening import open_coordination_store, opened_coordination_store
from lazarus_lite.errors import ActuatorError, ForensicsCopyFailed, LockBusy
from lazarus_lite.forensics import ForensicsRules, copy_data_files
from lazarus_lite.gates import ALL, KillSwitch
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.steps.ratequeue_promotion import fence_node
from ratequeue import membership
from ratequeue.local_cluster import LocalCluster, ShardNode, wait_for_replicas_in_sync
from ratequeue.topology import HeldNode, NodeRef, Shard, Topology
from tests.etcd_topology import map_in_store_of, store_address_of


def keep_once(
    cluster: LocalCluster, rules: ForensicsRules, actuator: LocalProcessActuator | None = None
) -> tuple[list[str], Topology]:
    async def run() -> tuple[list[str], Topology]:
        store = open_coordination_store(store_address_of(cluster))
        try:
            keeper = ShardKeeper(store, "test", "demote", forensics=rules, actuator=actuator)
            done = await keeper.run_once()
            topology = await store.topology.load()
            assert topology is not None
            return done, topology
        finally:
            await store.aclose()

    return asyncio.run(run())


def change_map(cluster: LocalCluster, current: Topology, changed: Shard) -> None:
    """`current`'s next epoch with `changed` in it, compare-and-set over `current`'s epoch."""

    async def publish() -> None:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            await store.topology.compare_and_set(current.epoch, current.next_with(changed))

    asyncio.run(publish())


def node(cluster: LocalCluster, name: str) -> ShardNode:
    return next(n for n in cluster.nodes() if n.name == name and isinstance(n, ShardNode))


def fail_over_by_hand(cluster: LocalCluster, held_at: float | None = None) -> str:
    """What the failover workflow leaves behind when shard s0's primary died: its first replica
    appointed in a new epoch, the old primary (stopped) held for forensics. Returns its name."""
    topology = map_in_store_of(cluster)
    shard = topology.shard("s0")
    old, new = node(cluster, shard.primary.name), node(cluster, shard.replicas[0].name)
    old.stop()
    epoch = topology.epoch + 1
    new.appoint(epoch, min_replicas=0)
    change_map(cluster, topology, shard.model_copy(update={
        "primary": shard.replicas[0],
        "replicas": shard.replicas[1:],
        "forensics": [*shard.forensics, HeldNode.of(shard.primary, held_at or time.time())],
        "epoch": epoch,
        "lineage": new.lineage(),
    }))  # fmt: skip
    return old.name


def write_some(cluster: LocalCluster, count: int) -> None:
    shard = map_in_store_of(cluster).shard("s0")
    primary = node(cluster, shard.primary.name)
    with primary.client() as conn:
        for _ in range(count):
            conn.incr(membership.BARRIER_KEY)
    wait_for_replicas_in_sync(primary, [node(cluster, r.name) for r in shard.replicas])


def runs_redis(pid: int) -> bool:
    """Does `pid` still run redis-server (a stopped child awaiting its reaping does not)?"""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def copies(directory: Path) -> list[Path]:
    """The shard's copies, oldest first (each is named `node@unix-seconds`)."""
    found = (directory / "s0").iterdir() if (directory / "s0").exists() else []
    return sorted(found, key=lambda copy: float(copy.name.partition("@")[2]))


def test_a_former_primary_that_answers_again_is_copied_and_rejoins_the_new_primary(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
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
    wait_for_replicas_in_sync(primary, [node(cluster, old)])  # the keeper does not wait for it
    (copy,) = copies(tmp_path / "forensics")
    assert copy.name.startswith(f"{old}@")
    assert (copy / "dump.rdb").stat().st_size > 0 and (copy / "appendonlydir").is_dir()
    with node(cluster, old).client() as conn:
        assert int(conn.get(membership.BARRIER_KEY)) >= 5  # it holds the shard's data again


def test_a_former_primary_still_dead_stays_held(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)

    done, topology = keep_once(cluster, ForensicsRules())

    assert [n.name for n in topology.shard("s0").forensics] == [old], done
    assert topology.shard("s0").replicas == []


def test_a_returning_node_is_not_rejoined_when_the_settings_say_no(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()

    keep_once(cluster, ForensicsRules(rejoin=False))

    assert [n.name for n in map_in_store_of(cluster).shard("s0").forensics] == [old]
    assert membership.is_parked(node(cluster, old).replication())


def test_a_returning_node_stays_parked_until_its_hold_time_is_over(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    old = fail_over_by_hand(cluster, held_at=time.time())
    node(cluster, old).restart()

    keep_once(cluster, ForensicsRules(hold_seconds=3600))
    assert [n.name for n in map_in_store_of(cluster).shard("s0").forensics] == [old]
    assert membership.is_parked(node(cluster, old).replication())

    keep_once(cluster, ForensicsRules(hold_seconds=0))
    assert [r.name for r in map_in_store_of(cluster).shard("s0").replicas] == [old]


def test_the_forensics_list_keeps_the_newest_within_its_count_and_age(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    topology = map_in_store_of(cluster)
    now = time.time()
    dead = [  # nobody listens on these ports
        HeldNode.of(NodeRef(name=f"gone{i}", host="127.0.0.1", port=free_port()), now - age)
        for i, age in enumerate([10_000, 50, 40, 30, 20])
    ]
    change_map(cluster, topology, topology.shard("s0").model_copy(update={"forensics": dead}))

    done, after = keep_once(cluster, ForensicsRules(keep=3, max_age=1_000))

    assert [n.name for n in after.shard("s0").forensics] == ["gone2", "gone3", "gone4"], done
    assert sum("beyond the bound" in line for line in done) == 2


def test_more_returns_than_the_bound_leave_as_many_copies_as_the_bound(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    rules = ForensicsRules(keep=2, copy_dir=tmp_path / "forensics")
    returned = []
    for _ in range(3):  # the two nodes take turns: each failover's old primary comes back
        old = fail_over_by_hand(cluster)
        node(cluster, old).restart()
        done, topology = keep_once(cluster, rules)
        assert any("rejoined" in line for line in done), done
        returned.append(old)
        shard = topology.shard("s0")
        wait_for_replicas_in_sync(node(cluster, shard.primary.name), [node(cluster, old)])

    assert len(copies(tmp_path / "forensics")) == 2
    assert [c.name.partition("@")[0] for c in copies(tmp_path / "forensics")] == returned[1:]
    assert topology.shard("s0").forensics == [] and len(topology.shard("s0").replicas) == 1
    with node(cluster, returned[-1]).client() as conn:
        assert conn.info("replication")["master_link_status"] == "up"


def test_a_former_primary_listed_before_its_resync_is_never_the_failover_candidate(
    start_cluster_on_suite_control: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old primary applied writes nobody acknowledged; it comes back, is listed, and the new
    # primary dies before it could follow it. A failover now reads it among the listed replicas:
    # what it applied must not outrank the replica that holds the write the new primary acked.
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    topology = map_in_store_of(cluster)
    shard = topology.shard("s0")
    change_map(cluster, topology, shard.model_copy(update={"appointed_enqueues": 5}))
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


def test_a_failover_that_starts_while_a_returning_node_is_copied_gets_the_shard_lock(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()
    failover_took_the_lock: list[bool] = []

    async def copy_while_a_failover_starts(*args: object, **kwargs: object) -> Path:
        # What the failover's `lock.acquire` step does, from another controller node.
        store = open_coordination_store(store_address_of(cluster))
        try:
            held = await store.locks.acquire("shard", "ratequeue/s0", "failover-workflow")
            failover_took_the_lock.append(True)
            await store.locks.release(held)
        except LockBusy:
            failover_took_the_lock.append(False)
        finally:
            await store.aclose()
        return await copy_data_files(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shard_keeper, "copy_data_files", copy_while_a_failover_starts)
    done, topology = keep_once(cluster, ForensicsRules(copy_dir=tmp_path / "forensics"))

    assert failover_took_the_lock == [True], done
    assert [r.name for r in topology.shard("s0").replicas] == [old], done


def test_a_kill_switch_engaged_while_a_returning_node_is_copied_stops_its_rejoin(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()

    async def copy_while_the_switch_is_engaged(*args: object, **kwargs: object) -> Path:
        # The gates were read before the copy; a BGSAVE takes up to 30 s.
        async with opened_coordination_store(store_address_of(cluster)) as store:
            await KillSwitch(store.flags).set(ALL, True, reason="engaged during the copy")
        return await copy_data_files(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shard_keeper, "copy_data_files", copy_while_the_switch_is_engaged)
    try:
        done, topology = keep_once(cluster, ForensicsRules(copy_dir=tmp_path / "forensics"))
    finally:

        async def release() -> None:
            async with opened_coordination_store(store_address_of(cluster)) as store:
                await KillSwitch(store.flags).set(ALL, False)

        asyncio.run(release())
    assert not any("rejoined" in line for line in done), done
    assert [n.name for n in topology.shard("s0").forensics] == [old], done
    assert membership.is_parked(node(cluster, old).replication())  # not emptied, not attached
    assert copies(tmp_path / "forensics") == []  # the copy of a pass that settled nothing goes


def test_a_returning_node_whose_copy_fails_counts_no_keeper_change(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()

    async def copy_that_fails(*args: object, **kwargs: object) -> Path:
        raise ForensicsCopyFailed("the disk is full")

    monkeypatch.setattr(shard_keeper, "copy_data_files", copy_that_fails)
    metrics = ControllerMetrics()

    async def run() -> list[str]:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            rules = ForensicsRules(copy_dir=tmp_path / "forensics")
            keeper = ShardKeeper(store, "test", "demote", metrics=metrics, forensics=rules)
            return [line for _ in range(2) for line in await keeper.run_once()]

    done = asyncio.run(run())
    assert sum("stays held: the disk is full" in line for line in done) == 2, done
    changes = metrics.registry.get_sample_value(
        "lazarus_shard_keeper_changes_total", {"action": "settle_returning"}
    )
    assert not changes, done


def test_a_returning_node_does_not_rejoin_a_shard_at_its_replica_target(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    old = fail_over_by_hand(cluster)
    topology = map_in_store_of(cluster)
    # A replacement took the old primary's place: the shard lists its target of replicas.
    shard = topology.shard("s0").model_copy(update={"replica_target": 1})
    change_map(cluster, topology, shard)
    node(cluster, old).restart()

    done, topology = keep_once(cluster, ForensicsRules())

    shard = topology.shard("s0")
    assert any(f"released {old}" in line for line in done), done
    assert len(shard.replicas) == 1 and old not in [r.name for r in shard.replicas]
    assert shard.forensics == []
    assert membership.is_parked(node(cluster, old).replication())


def test_a_released_node_the_actuator_started_is_stopped(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    actuator = LocalProcessActuator(tmp_path / "actuator")
    spare = asyncio.run(actuator.provision_replica("s0", "s0-spare"))
    (entry,) = actuator.provisioned()
    started = ShardNode("s0-spare", "replica", "s0", spare.port, tmp_path, pid=entry["pid"])
    try:
        topology = map_in_store_of(cluster)
        held = HeldNode.of(spare, time.time())  # a former member the actuator had provisioned
        change_map(cluster, topology, topology.shard("s0").model_copy(update={"forensics": [held]}))

        done, topology = keep_once(cluster, ForensicsRules(), actuator)

        assert any("removed s0-spare" in line for line in done), done
        assert topology.shard("s0").forensics == []
        assert [r.name for r in topology.shard("s0").replicas] == ["s0-replica1"]
        deadline = time.monotonic() + 10
        while runs_redis(entry["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not runs_redis(entry["pid"])
    finally:
        started.stop()


def test_a_returning_node_the_keeper_cannot_settle_for_a_busy_lock_leaves_no_copy(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()

    async def lock_held_by_a_failover() -> None:
        store = open_coordination_store(store_address_of(cluster))
        try:
            await store.locks.acquire("shard", "ratequeue/s0", "failover-workflow")
        finally:
            await store.aclose()

    asyncio.run(lock_held_by_a_failover())
    done, topology = keep_once(cluster, ForensicsRules(copy_dir=tmp_path / "forensics"))

    assert [n.name for n in topology.shard("s0").forensics] == [old], done
    assert copies(tmp_path / "forensics") == []


def test_three_keepers_settling_one_return_at_once_leave_one_whole_copy(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    write_some(cluster, 5)
    old = fail_over_by_hand(cluster)
    node(cluster, old).restart()
    rules = ForensicsRules(copy_dir=tmp_path / "forensics")

    async def three_keepers() -> None:
        stores = [open_coordination_store(store_address_of(cluster)) for _ in range(3)]
        try:
            keepers = [
                ShardKeeper(store, f"node-{i}", "demote", forensics=rules)
                for i, store in enumerate(stores)
            ]
            await asyncio.gather(*(keeper.run_once() for keeper in keepers))
        finally:
            for store in stores:
                await store.aclose()

    asyncio.run(three_keepers())

    assert map_in_store_of(cluster).shard("s0").forensics == []
    (copy,) = copies(tmp_path / "forensics")
    assert copy.name.startswith(f"{old}@") and (copy / "dump.rdb").stat().st_size > 0
    assert list((tmp_path / "forensics" / ".incoming").iterdir()) == []


class HalfwayCopier:
    """A `DataCopier` (as the Docker actuator is) that writes the first file it is asked for and
    then fails as the engine would; it records where it was asked to write."""

    def __init__(self) -> None:
        self.into: list[Path] = []

    def copy_data_out(self, node: str, data_dir: Path, names: list[str], into: Path) -> None:
        self.into.append(into)
        into.mkdir(parents=True)
        (into / names[0]).write_bytes((data_dir / names[0]).read_bytes())
        raise ActuatorError(f"docker actuator: the engine went away copying {node}")


def test_a_copy_through_a_data_copier_is_written_under_incoming_and_renamed_into_place(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    primary = map_in_store_of(cluster).shard("s0").primary
    written: list[Path] = []

    class LocalCopier:
        def copy_data_out(self, node: str, data_dir: Path, names: list[str], into: Path) -> None:
            written.append(into)
            into.mkdir(parents=True)
            for name in names:
                copy = shutil.copytree if (data_dir / name).is_dir() else shutil.copy2
                copy(data_dir / name, into / name)

    held = HeldNode.of(primary, time.time())
    copy = asyncio.run(copy_data_files(held, "s0", tmp_path, copier=LocalCopier()))

    assert [w.parent for w in written] == [tmp_path / ".incoming"]
    assert copies(tmp_path) == [copy] and (copy / "dump.rdb").stat().st_size > 0
    assert list((tmp_path / ".incoming").iterdir()) == []


def test_a_data_copier_that_fails_halfway_leaves_no_copy_and_a_clean_incoming(
    start_cluster_on_suite_control: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    held = HeldNode.of(map_in_store_of(cluster).shard("s0").primary, time.time())
    copier = HalfwayCopier()

    with pytest.raises(ForensicsCopyFailed, match="engine went away"):
        asyncio.run(copy_data_files(held, "s0", tmp_path, copier=copier))

    assert [into.parent for into in copier.into] == [tmp_path / ".incoming"]
    assert copies(tmp_path) == [] and list((tmp_path / ".incoming").iterdir()) == []
