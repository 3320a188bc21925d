"""Membership and fencing on real redis-server processes: no node boots writable, a write of an
older epoch is refused everywhere, a replacement replica does not attach by itself, and the
choice of the replica to promote follows the primary's lineage (docs/membership.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from common.errors import RedisStartError
from common.redis_processes import free_port, start_redis
from detection import probes
from lazarus_lite.actuators import LocalProcessActuator
from lazarus_lite.coordination.opening import opened_coordination_store
from lazarus_lite.errors import Escalate
from lazarus_lite.steps import ratequeue_promotion
from lazarus_lite.steps.ratequeue_promotion import escalate_if_gone, good_replicas_of
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue import membership
from ratequeue.errors import NoSafeCandidate, RetryableError, ShardUnavailable, StaleEpoch
from ratequeue.local_cluster import LocalCluster, ShardNode, ShardNodes, start_node
from ratequeue.membership import ReplicaPosition, most_complete_replica
from ratequeue.rates import Rate
from ratequeue.scripts import LEASES_KEY, held_ids, queue_key
from ratequeue.shard import OutgoingMessage, ShardQueue
from ratequeue.topology import Lineage
from tests.etcd_topology import store_address_of

H, H_PREV, OTHER = "a" * 40, "b" * 40, "c" * 40
LINEAGE = Lineage(replid=H, since=1000, previous=H_PREV)


def message(message_id: str = "m1") -> OutgoingMessage:
    return OutgoingMessage(
        message_id, "+14155550100", 1, Rate(per_second=1, burst=1), '{"text": "hi"}'
    )


async def enqueue(node: ShardNode, epoch: int, message_id: str = "m1") -> None:
    connection = aioredis.Redis(host=node.host, port=node.port, socket_timeout=2)
    try:
        queue = ShardQueue("s0", connection)
        await queue.enqueue_batch(epoch, [message(message_id)], min_replicas=0, wait_timeout_ms=100)
    finally:
        await connection.aclose()


async def dequeue(node: ShardNode) -> list:
    connection = aioredis.Redis(host=node.host, port=node.port, socket_timeout=2)
    try:
        return await ShardQueue("s0", connection).dequeue(10, 30_000)
    finally:
        await connection.aclose()


def keys(node: ShardNode) -> int:
    with node.client() as conn:
        return int(conn.dbsize())


# -- nodes boot parked -------------------------------------------------------------------------


def test_a_shard_node_boots_parked_and_refuses_writes(tmp_path: Path) -> None:
    node = start_node("s0-primary", "primary", "s0", tmp_path)
    try:
        info = node.replication()
        assert info["role"] == "slave" and membership.is_parked(info)
        with pytest.raises(RetryableError):
            asyncio.run(enqueue(node, 1))
        assert keys(node) == 0
    finally:
        node.stop()


def test_a_shard_node_cannot_be_started_writable(tmp_path: Path) -> None:
    with pytest.raises(RedisStartError, match="a shard node boots parked"):
        start_redis("s0-primary", "primary", "s0", tmp_path)


def test_a_shard_node_known_only_by_its_port_restarts_parked(tmp_path: Path) -> None:
    """However a shard node's handle was made (a replacement found by port), a restart through
    it boots the node parked."""
    started = start_node("s0-replica", "replica", "s0", tmp_path)
    found = ShardNode("s0-replica", "replica", "s0", started.port, tmp_path, pid=started.pid)
    try:
        started.stop()
        found.restart()
        assert membership.is_parked(found.replication())
    finally:
        found.stop()
        started.stop()


def test_a_node_made_primary_by_hand_still_refuses_every_write(tmp_path: Path) -> None:
    node = start_node("s0-primary", "primary", "s0", tmp_path)
    try:
        with node.client() as conn:
            conn.execute_command("REPLICAOF", "NO", "ONE")
            with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
                conn.set("rq:fence", "1")
        assert keys(node) == 0
    finally:
        node.stop()


def test_a_restarted_primary_comes_back_parked_with_its_data(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    primary = cluster.shards[0].primary
    asyncio.run(enqueue(primary, 1))
    primary.restart()
    assert membership.is_parked(primary.replication())
    with pytest.raises(ShardUnavailable, match="replica"):
        asyncio.run(enqueue(primary, 1, "m2"))
    with primary.client() as conn:
        assert "m1" in held_ids(conn, "+14155550100")
        conn.execute_command("REPLICAOF", "NO", "ONE")  # by hand: its old fence is still there
    with pytest.raises(ShardUnavailable, match="NOREPLICAS"):
        asyncio.run(enqueue(primary, 1, "m2"))
    with primary.client() as conn:
        assert "m2" not in held_ids(conn, "+14155550100")


async def promote_with_replicas(
    candidate: ShardNode, followers: list[ShardNode], timeout: float
) -> tuple[int, float]:
    """A failover by hand: park everyone, appoint `candidate` (write quorum 1), repoint the
    followers; returns what `writable_with` says and how long it took."""
    conns = [aioredis.Redis(host=n.host, port=n.port) for n in [candidate, *followers]]
    try:
        for conn in conns:
            await membership.park(conn)
        await membership.appoint_primary(conns[0], 2, min_replicas=1)
        for conn in conns[1:]:
            await conn.execute_command("REPLICAOF", candidate.host, str(candidate.port))
        started = time.monotonic()
        good = await membership.writable_with(conns[0], 1, timeout)
        return good, time.monotonic() - started
    finally:
        for conn in conns:
            await conn.aclose()


def write_once(node: ShardNode) -> None:
    with redis.Redis(host=node.host, port=node.port) as conn:
        conn.set("written-at-once", "1")


def test_a_new_primary_accepts_writes_as_soon_as_writable_with_returns(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    shard = start_cluster(shards=1, replicas=2).shards[0]
    shard.primary.signal(signal.SIGKILL)
    good, _ = asyncio.run(promote_with_replicas(shard.replicas[1], [shard.replicas[0]], 5.0))
    assert good == 1
    write_once(shard.replicas[1])  # NOREPLICAS if the quorum were not there


def test_a_new_primary_without_replicas_is_given_up_on_after_the_timeout(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    shard = start_cluster(shards=1, replicas=2).shards[0]
    shard.primary.signal(signal.SIGKILL)
    good, took = asyncio.run(promote_with_replicas(shard.replicas[1], [], 0.2))
    assert good == 0 and took >= 0.2


def test_a_new_primary_without_replicas_refuses_writes(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    shard = start_cluster(shards=1, replicas=2).shards[0]
    shard.primary.signal(signal.SIGKILL)
    asyncio.run(promote_with_replicas(shard.replicas[1], [], 0.2))
    with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
        write_once(shard.replicas[1])


def test_a_stalled_new_primary_holds_the_publication_only_about_the_write_quorum_wait(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    candidate = start_cluster(shards=1, replicas=1).shards[0].replicas[0]
    candidate.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        good = asyncio.run(good_replicas_of(candidate.ref(), required=1))
        took = time.monotonic() - started
    finally:
        candidate.signal(signal.SIGCONT)
    # None, not an error: the repoint step returns and the topology is published.
    assert good is None
    # The bound is WRITABLE_WAIT_SECONDS + 0.1 = 0.6 s; the room left for a busy machine stops
    # short of the 1.5 s a connection's own timeout once held it for.
    assert took < 1.4


def test_a_step_escalates_once_the_primary_it_appointed_is_dead(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    # Not retried for seconds: the failover of the dead primary waits on this workflow's lock.
    primary = start_cluster(shards=1, replicas=1).shards[0].primary
    primary.signal(signal.SIGKILL)
    with pytest.raises(Escalate, match=f"primary {primary.name} stopped answering while"):
        asyncio.run(escalate_if_gone(primary.ref(), "its health was verified", OSError("gone")))


def test_a_step_is_not_escalated_while_the_primary_it_appointed_is_paused_a_second(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    # A slow primary times out PINGs; like the sensor, one or two timeouts do not make it gone.
    primary = start_cluster(shards=1, replicas=1).shards[0].primary
    primary.signal(signal.SIGSTOP)
    resume = threading.Timer(1.0, primary.signal, args=(signal.SIGCONT,))
    resume.start()
    try:
        asyncio.run(escalate_if_gone(primary.ref(), "its health was verified", TimeoutError()))
    finally:
        resume.join()


def test_a_step_is_not_escalated_for_one_dropped_connection_to_its_primary(
    start_cluster: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = start_cluster(shards=1, replicas=1).shards[0].primary
    real_ping = probes.ping
    pings: list[probes.ProbeResult] = []

    async def first_connection_dropped(*args: Any, **kwargs: Any) -> probes.ProbeResult:
        probe = await real_ping(*args, **kwargs)
        if not pings:
            probe = probes.ProbeResult(False, 0.0, "Connection reset by peer")
        pings.append(probe)
        return probe

    monkeypatch.setattr(probes, "ping", first_connection_dropped)
    asyncio.run(escalate_if_gone(primary.ref(), "its health was verified", OSError("reset")))
    assert [p.ok for p in pings] == [False, True], "the PING was not repeated after the drop"


VERIFY_HEALTH = parse_workflow(
    """
name: verify
steps:
  - name: verify
    run: ratequeue.verify_health
    retry: {max_attempts: 3, backoff: 0.01}
""",
    "verify.yaml",
)


async def verified(cluster: LocalCluster) -> WorkflowRecord:
    """`verify_health` for the cluster's shard, run by the workflow engine with its retries."""
    async with opened_coordination_store(store_address_of(cluster)) as store:
        env = StepEnvironment(store=store, node_id="n1")
        engine = WorkflowEngine(env, {"verify": VERIFY_HEALTH})
        started = await engine.start("verify", {"shard": cluster.shards[0].id, "min_replicas": 1})
        await engine.wait(started.id)
        return await engine.store.load(started.id)


def test_verify_health_escalates_at_once_when_the_new_primary_is_dead(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    primary = cluster.shards[0].primary
    primary.signal(signal.SIGKILL)
    record = asyncio.run(verified(cluster))
    assert record.status == "escalated"
    assert f"primary {primary.name} stopped answering" in (record.escalation or "")
    assert record.steps["verify"].attempts == 1, "a dead primary's step was retried"


def test_verify_health_is_retried_after_one_error_while_the_new_primary_answers(
    start_cluster_on_suite_control: Callable[..., LocalCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    real_write = ratequeue_promotion.write_once_replicas_follow
    failures: list[int] = []

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise redis.ConnectionError("Connection reset by peer")
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(ratequeue_promotion, "write_once_replicas_follow", fails_once)
    record = asyncio.run(verified(cluster))
    assert record.status == "succeeded", record.escalation
    assert failures == [1], "the error was never injected"
    assert record.steps["verify"].attempts == 2


FENCE = parse_workflow(
    """
name: fence
steps:
  - name: fence_old_primary
    run: ratequeue.fence_old_primary
""",
    "fence.yaml",
)


def command_bytes(*args: str) -> bytes:
    """A command as a client sends it (RESP), for a raw socket: redis-py would wait for the
    reply of a stopped server before the test could go on."""
    return "".join([f"*{len(args)}\r\n", *(f"${len(a)}\r\n{a}\r\n" for a in args)]).encode()


async def run_fence(cluster: LocalCluster, shard: ShardNodes, min_replicas: int) -> dict:
    """`fence_old_primary` of `shard`, run by the workflow engine; the step's output."""
    inputs = {"shard": shard.id, "failed_primary": shard.primary.name,
              "min_replicas": min_replicas}  # fmt: skip
    async with opened_coordination_store(store_address_of(cluster)) as store:
        env = StepEnvironment(store=store, node_id="n1")
        engine = WorkflowEngine(env, {"fence": FENCE})
        started = await engine.start("fence", inputs)
        await engine.wait(started.id)
        record = await engine.store.load(started.id)
    assert record.status == "succeeded", record.escalation
    return record.steps["fence_old_primary"].output


def fence_while_stopped(
    cluster: LocalCluster, *, min_replicas: int = 1, in_flight: tuple[bytes, ...] = ()
) -> tuple[dict, list[bytes]]:
    """The fence of the first shard, run while its primary is SIGSTOPped; `in_flight` commands
    sent to the primary after the stop, before the fence (a client's write the primary reads
    only once resumed). The step's output and the primary's replies to `in_flight`."""
    shard = cluster.shards[0]
    shard.primary.signal(signal.SIGSTOP)
    try:
        with socket.create_connection((shard.primary.host, shard.primary.port), 2) as client:
            client.sendall(b"".join(in_flight))
            output = asyncio.run(run_fence(cluster, shard, min_replicas))
            shard.primary.signal(signal.SIGCONT)
            client.settimeout(5)
            replies = b""
            while replies.count(b"\r\n") < len(in_flight):  # each reply here is one line
                replies += client.recv(4096)
    finally:
        shard.primary.signal(signal.SIGCONT)
    return output, replies.splitlines()


@pytest.fixture
def fenced_while_stopped(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> tuple[ShardNodes, dict]:
    """A shard (two replicas) whose primary was SIGSTOPped while `fence_old_primary` ran; the
    primary resumed afterwards. The shard and the step's output."""
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    output, _ = fence_while_stopped(cluster)
    return cluster.shards[0], output


def test_the_fence_parks_the_replicas_and_gives_up_on_a_silent_old_primary_at_its_own_bound(
    fenced_while_stopped: tuple[ShardNodes, dict],
) -> None:
    shard, output = fenced_while_stopped
    assert [r["reachable"] for r in output["replicas"]] == [True, True]
    assert all(membership.is_parked(replica.replication()) for replica in shard.replicas)
    # Given up on after the fence's own short wait, not after a connection's timeout: the
    # promotion waits for the replicas' fence only.
    assert not output["old_primary_demoted"]
    wait = ratequeue_promotion.OLD_PRIMARY_DEMOTION_WAIT
    assert output["old_primary_error"] == f"no answer within {wait} s"


def test_an_old_primary_the_fence_gave_up_on_acknowledges_nothing_once_it_answers_again(
    fenced_while_stopped: tuple[ShardNodes, dict],
) -> None:
    shard, _ = fenced_while_stopped
    with shard.primary.client() as conn:
        assert conn.info("replication")["role"] == "master"  # never demoted
        try:
            conn.incr(membership.BARRIER_KEY)
        except redis.exceptions.ResponseError as error:
            assert str(error).startswith("NOREPLICAS")
        else:  # written, but no replica can confirm it: never acknowledged
            assert conn.execute_command("WAIT", 1, 200) == 0


def test_an_old_primary_the_fence_gave_up_on_is_demoted_when_it_is_held_for_forensics(
    fenced_while_stopped: tuple[ShardNodes, dict],
) -> None:
    shard, _ = fenced_while_stopped
    assert asyncio.run(ratequeue_promotion.hold_for_forensics(shard.primary.ref(), "demote")) == (
        "demoted"
    )
    assert membership.is_parked(shard.primary.replication())


def test_a_write_in_flight_on_a_stopped_primary_is_not_acknowledged_after_the_fence(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # Sent before the fence, read by the primary only after it: k = 1, both replicas parked.
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    write = command_bytes("INCR", membership.BARRIER_KEY)
    _, (incr, wait) = fence_while_stopped(
        cluster, in_flight=(write, command_bytes("WAIT", "1", "500"))
    )
    assert incr.startswith(b"-NOREPLICAS") or wait == b":0", (incr, wait)


def test_an_old_primary_followed_by_a_replica_the_fence_cannot_reach_acknowledges_nothing(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # k = 2 of 3 replicas; the third is listed at an address where nothing answers, so the
    # fence cannot park it and it still follows the old primary: one replica, fewer than k.
    cluster = start_cluster_on_suite_control(shards=1, replicas=3, min_replicas=2)
    shard = cluster.shards[0]

    async def hide_third_replica() -> None:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            topology = await store.topology.load()
            assert topology is not None
            listed = topology.shard(shard.id)
            replicas = list(listed.replicas)
            replicas[2] = replicas[2].model_copy(update={"port": free_port(("127.0.0.1",))})
            changed = listed.model_copy(update={"replicas": replicas})
            await store.topology.compare_and_set(topology.epoch, topology.next_with(changed))

    asyncio.run(hide_third_replica())
    write = command_bytes("INCR", membership.BARRIER_KEY)
    output, (incr, wait) = fence_while_stopped(
        cluster, min_replicas=2, in_flight=(write, command_bytes("WAIT", "2", "500"))
    )
    assert [r["reachable"] for r in output["replicas"]] == [True, True, False]
    assert shard.replicas[2].replication()["master_port"] == shard.primary.port  # still follows
    assert incr.startswith(b"-NOREPLICAS") or wait in (b":0", b":1"), (incr, wait)


def test_a_write_of_an_older_epoch_is_refused_by_the_primary_of_a_newer_one(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    primary = cluster.shards[0].primary
    primary.appoint(2, min_replicas=1)
    with pytest.raises(StaleEpoch):
        asyncio.run(enqueue(primary, 1))
    with pytest.raises(StaleEpoch):  # nor a newer one it was never told of
        asyncio.run(enqueue(primary, 3))
    asyncio.run(enqueue(primary, 2))


def test_a_demoted_primary_passes_no_fence_even_if_made_writable_again(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    primary = cluster.shards[0].primary

    async def demote() -> None:
        connection = aioredis.Redis(host=primary.host, port=primary.port)
        try:
            await membership.park(connection, drop_fence=True)
        finally:
            await connection.aclose()

    asyncio.run(demote())
    with primary.client() as conn:
        assert conn.get("rq:fence") is None
        conn.execute_command("REPLICAOF", "NO", "ONE")
        conn.config_set("min-replicas-to-write", 0)  # even past the boot-time guard
    with pytest.raises(StaleEpoch):
        asyncio.run(enqueue(primary, 1))


# -- a replacement replica does not attach itself -----------------------------------------------


def test_the_actuator_starts_a_replacement_parked_and_reuses_it(
    start_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    actuator = LocalProcessActuator(tmp_path / "actuator")
    node = asyncio.run(actuator.provision_replica("s0", "s0-replica-e1"))
    replacement = ShardNode("s0-replica-e1", "replica", "s0", node.port, tmp_path, pid=0)
    try:
        assert membership.is_parked(replacement.replication())
        assert cluster.shards[0].primary.replication()["connected_slaves"] == 1
        again = asyncio.run(actuator.provision_replica("s0", "s0-replica-e1"))
        assert again.port == node.port
    finally:
        entry = actuator.provisioned()[0]
        ShardNode("s0-replica-e1", "replica", "s0", node.port, tmp_path, pid=entry["pid"]).stop()


# -- the candidate rule (pure logic) -----------------------------------------------------------


def test_the_highest_offset_on_the_lineage_is_chosen() -> None:
    best, ignored = most_complete_replica(
        [ReplicaPosition("r2", H_PREV, 900), ReplicaPosition("r3", H, 1500)],
        LINEAGE,
        listed=2,
        min_replicas=1,
    )
    assert best.name == "r3" and ignored == {}


def test_a_replica_that_has_not_resynced_counts_but_holds_only_a_prefix() -> None:
    best, _ = most_complete_replica(
        [ReplicaPosition("r2", H_PREV, 1000)], LINEAGE, listed=1, min_replicas=1
    )
    assert best.name == "r2"


def test_writes_acknowledged_before_the_promotion_on_the_primary_alone_escalate() -> None:
    # r2 lagged when the primary was appointed at offset 1000; r3 is listed but never synced.
    with pytest.raises(NoSafeCandidate, match="below 1000"):
        most_complete_replica(
            [ReplicaPosition("r2", H_PREV, 700, enqueues=80)], LINEAGE, listed=1, min_replicas=1
        )
    with pytest.raises(NoSafeCandidate, match="fewer than the 100"):
        most_complete_replica(
            [ReplicaPosition("r2", H_PREV, 700, enqueues=80),
             ReplicaPosition("r3", OTHER, 1, enqueues=0)],
            LINEAGE, listed=2, min_replicas=1, appointed_enqueues=100,
        )  # fmt: skip


def test_a_restarted_replica_is_not_comparable_and_does_not_count() -> None:
    with pytest.raises(NoSafeCandidate, match="1 of 2 listed replicas"):
        most_complete_replica(
            [ReplicaPosition("r2", H, 1500), ReplicaPosition("r3", OTHER, 1)],
            LINEAGE,
            listed=2,
            min_replicas=1,
        )


def test_a_position_past_the_appointment_on_the_previous_stream_has_diverged() -> None:
    _, ignored = most_complete_replica(
        [ReplicaPosition("r2", H_PREV, 1200), ReplicaPosition("r3", H, 1300)],
        LINEAGE,
        listed=2,
        min_replicas=2,
    )
    assert "r2" in ignored


def test_n_minus_k_plus_one_positions_are_needed() -> None:
    with pytest.raises(NoSafeCandidate, match="2 are needed"):
        most_complete_replica([ReplicaPosition("r1", H, 2000)], LINEAGE, listed=2, min_replicas=1)


def test_without_a_recorded_lineage_one_history_is_required() -> None:
    with pytest.raises(NoSafeCandidate, match="different replication histories"):
        most_complete_replica(
            [ReplicaPosition("r1", H, 10), ReplicaPosition("r2", OTHER, 20)],
            None,
            listed=2,
            min_replicas=1,
        )
    best, _ = most_complete_replica(
        [ReplicaPosition("r1", H, 10, enqueues=3), ReplicaPosition("r2", OTHER, 1, enqueues=0)],
        None,
        listed=2,
        min_replicas=1,
        appointed_enqueues=0,
    )
    assert best.name == "r1"


def test_equal_enqueue_counts_prefer_the_lineage_and_the_higher_offset() -> None:
    positions = [ReplicaPosition("r1", H, 9000, enqueues=50),
                 ReplicaPosition("r2", H, 8000, enqueues=50),
                 ReplicaPosition("r3", OTHER, 1, enqueues=50)]  # fmt: skip
    best, _ = most_complete_replica(
        positions, LINEAGE, listed=3, min_replicas=1, appointed_enqueues=10
    )
    assert best.name == "r1"


def test_a_restarted_replica_is_compared_by_enqueues_applied_when_offsets_cannot_decide() -> None:
    # R1 was being promoted when it died; restarted, its replication id is new, its data is not.
    positions = [ReplicaPosition("r1", OTHER, 1, enqueues=500),
                 ReplicaPosition("r2", H, 900, enqueues=420)]  # fmt: skip
    best, compared = most_complete_replica(
        positions, LINEAGE, listed=2, min_replicas=1, appointed_enqueues=10
    )
    assert best.name == "r1" and "enqueues" in compared["r1"]


def test_enqueue_counts_below_the_appointment_escalate() -> None:
    positions = [ReplicaPosition("r1", OTHER, 1, enqueues=5),
                 ReplicaPosition("r2", H, 900, enqueues=4)]  # fmt: skip
    with pytest.raises(NoSafeCandidate, match="fewer than the 10"):
        most_complete_replica(positions, LINEAGE, listed=2, min_replicas=1, appointed_enqueues=10)


def test_without_the_appointment_count_a_restarted_replica_is_not_compared() -> None:
    positions = [ReplicaPosition("r1", OTHER, 1, enqueues=500),
                 ReplicaPosition("r2", H, 900, enqueues=420)]  # fmt: skip
    with pytest.raises(NoSafeCandidate, match="1 of 2"):
        most_complete_replica(positions, LINEAGE, listed=2, min_replicas=1)


def test_a_replica_that_applied_writes_past_the_appointment_is_not_compared_by_count() -> None:
    # r3 kept following the old primary, cut off with it: what it applied was never acknowledged.
    positions = [ReplicaPosition("r2", H, 1500, enqueues=60),
                 ReplicaPosition("r3", H_PREV, 4000, enqueues=900),
                 ReplicaPosition("r4", OTHER, 1, enqueues=0)]  # fmt: skip
    best, _ = most_complete_replica(
        positions, LINEAGE, listed=3, min_replicas=2, appointed_enqueues=10
    )
    assert best.name == "r2"


def test_a_node_cannot_start_on_a_port_another_redis_holds(tmp_path: Path) -> None:
    other = start_node("other", "primary", "s9", tmp_path)
    try:
        with pytest.raises(RedisStartError):
            start_node("s0-replica-e2", "replica", "s0", tmp_path, port=other.port, timeout=3)
    finally:
        other.stop()


# -- a primary cut off from its replicas ---------------------------------------------------------


def wait_until_no_replica_counts(primary: ShardNode, timeout: float = 15.0) -> None:
    """Until the primary counts no replica as acknowledging. Redis recounts once a second and
    its lag is whole seconds, so a silent replica stops counting 3 to 5 s after its last ack:
    a fixed sleep is a race."""
    deadline = time.monotonic() + timeout
    while True:
        with primary.client() as conn:
            if conn.info("replication").get("min_slaves_good_slaves") == 0:
                return
        assert time.monotonic() < deadline, "the primary still counts a silent replica"
        time.sleep(0.1)


def test_a_primary_whose_replicas_stopped_acknowledging_refuses_dequeues_and_leases_nothing(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
    asyncio.run(enqueue(primary, 1))
    os.kill(replica.pid, signal.SIGSTOP)  # as seen from the primary: a partition
    try:
        wait_until_no_replica_counts(primary)
        with pytest.raises(ShardUnavailable, match="NOREPLICAS"):
            asyncio.run(dequeue(primary))
        with primary.client() as conn:
            assert conn.llen(queue_key("+14155550100")) == 1 and conn.zcard(LEASES_KEY) == 0
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:  # the replica acknowledges again: the primary serves again
        try:
            [leased] = asyncio.run(dequeue(primary))
            break
        except ShardUnavailable:
            assert time.monotonic() < deadline, "the primary did not serve again"
            time.sleep(0.2)
    assert leased.id == "m1"
