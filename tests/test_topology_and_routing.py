"""Topology changes: compare-and-set on the epoch, clients follow them, old primaries are fenced."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from common.nodes import CLIENT_HOST
from common.redis_processes import free_port, redis_server_binary
from lazarus_lite.coordination.opening import open_coordination_store, opened_coordination_store
from ratequeue import membership
from ratequeue.client import (
    WARM_CONNECTIONS,
    AsyncRatequeueClient,
    ClientRetryPolicy,
    ClientSettings,
    RatequeueClient,
)
from ratequeue.errors import EpochConflict, ShardUnavailable, StaleEpoch
from ratequeue.local_cluster import LocalCluster, ShardNode
from ratequeue.numbers import normalize_number
from ratequeue.rates import Rate
from ratequeue.scripts import held_ids
from ratequeue.shard import ALL_SCRIPTS, OutgoingMessage, ShardQueue
from ratequeue.slots import slot_for
from ratequeue.topology import NodeRef, Shard, Topology
from tests.conftest import MapOnSuiteControl
from tests.etcd_topology import store_address_of


def number_on(topology: Topology, shard_id: str) -> str:
    for i in range(10_000):
        number = normalize_number(f"+1415{5550000 + i:07d}")
        if topology.shard_for_slot(slot_for(number)).id == shard_id:
            return number
    raise AssertionError("no number found")


def promote_replica_by_hand(
    cluster: LocalCluster, shard_id: str, *, old_primary_listed_as_replica: bool = False
) -> Topology:
    """What the failover workflow will do, reduced to its effect on routing. With
    `old_primary_listed_as_replica`, the deposed primary stays listed (as a replica), so a client
    keeps its connections to it."""
    shard_nodes = cluster.shard(shard_id)
    new_primary = shard_nodes.replicas[0]

    async def publish() -> Topology:
        coordination = open_coordination_store(store_address_of(cluster))
        node = aioredis.Redis.from_url(new_primary.url)
        try:
            store = coordination.topology
            current = await store.load()
            assert current is not None
            await membership.appoint_primary(
                node, current.epoch + 1, min_replicas=min(1, len(shard_nodes.replicas) - 1)
            )
            for other in shard_nodes.replicas[1:]:
                with other.client() as conn:
                    conn.execute_command("REPLICAOF", new_primary.peer_host, new_primary.port)
            shards = []
            for shard in current.shards:
                if shard.id == shard_id:
                    deposed = [shard.primary]
                    kept, held = (deposed, []) if old_primary_listed_as_replica else ([], deposed)
                    shard = shard.model_copy(update={
                        "primary": new_primary.ref(),
                        "replicas": [r.ref() for r in shard_nodes.replicas[1:]] + kept,
                        "epoch": current.epoch + 1, "forensics": held})  # fmt: skip
                shards.append(shard)
            changed = Topology(epoch=current.epoch + 1, shards=shards)
            await store.compare_and_set(current.epoch, changed)
            return changed
        finally:
            await coordination.aclose()
            await node.aclose()

    return asyncio.run(publish())


def republish_unchanged(cluster: LocalCluster) -> Topology:
    """Publish the current topology again under the next epoch (same nodes in the same roles)."""

    async def publish() -> Topology:
        async with opened_coordination_store(store_address_of(cluster)) as coordination:
            current = await coordination.topology.load()
            assert current is not None
            again = current.model_copy(update={"epoch": current.epoch + 1})
            await coordination.topology.compare_and_set(current.epoch, again)
            return again

    return asyncio.run(publish())


def test_a_topology_change_with_a_stale_epoch_is_refused(
    cluster: LocalCluster, map_on_suite_control: MapOnSuiteControl
) -> None:
    map_on_suite_control(cluster)
    newer = republish_unchanged(cluster)  # epoch 1 -> 2

    async def attempt() -> None:
        async with opened_coordination_store(store_address_of(cluster)) as coordination:
            with pytest.raises(EpochConflict, match="is 2, expected 1"):
                await coordination.topology.compare_and_set(1, newer)

    asyncio.run(attempt())


def test_a_client_learns_of_a_new_epoch_by_notification(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(cluster, refresh_interval=60)  # periodic refresh out of the picture
    promote_replica_by_hand(cluster, "s0")
    deadline = time.monotonic() + 2
    while client.topology.epoch != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.topology.epoch == 2


def test_after_an_epoch_change_writes_go_to_the_new_primary(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(cluster, min_replicas=0)
    number = number_on(client.topology, "s0")
    promote_replica_by_hand(cluster, "s0")
    client.refresh_topology()
    client.enqueue(number, "after", "after-failover")
    new_primary, old_primary = cluster.shard("s0").replicas[0], cluster.shard("s0").primary
    with new_primary.client() as conn:
        assert "after-failover" in held_ids(conn, number)
    with old_primary.client() as conn:
        assert "after-failover" not in held_ids(conn, number)


def one_shard_of_two_replicas(
    start_cluster: Callable[..., LocalCluster],
    make_client: Callable[..., RatequeueClient],
    **settings: object,
) -> tuple[LocalCluster, RatequeueClient, str]:
    """A shard with two replicas (one left to confirm writes after a promotion), a client that
    learns of topologies by notification only, and a number on the shard."""
    cluster = start_cluster(shards=1, replicas=2)
    client = make_client(cluster, refresh_interval=60, **settings)
    return cluster, client, number_on(client.topology, "s0")


def test_a_stale_client_is_rerouted_when_the_old_primary_cannot_acknowledge(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster, client, number = one_shard_of_two_replicas(start_cluster, make_client)
    promote_replica_by_hand(cluster, "s0")
    # Whether or not the notification arrived first, the write ends on the new primary: on the
    # old one WAIT cannot succeed (its replica left), so the client refreshes and retries.
    client.enqueue(number, "x", "rerouted")
    with cluster.shard("s0").replicas[0].client() as conn:
        assert "rerouted" in held_ids(conn, number)


def scripts_loaded_and_connections(conn: redis.Redis) -> tuple[int, int]:
    """How many SCRIPT LOAD calls and connections the node has taken so far."""
    script_calls = conn.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0)
    return script_calls, conn.info("stats")["total_connections_received"]


def test_the_first_write_after_a_failover_finds_the_new_primary_connected_and_its_scripts_loaded(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster, client, number = one_shard_of_two_replicas(start_cluster, make_client)
    successor = cluster.shard("s0").replicas[0]
    with successor.client() as conn:
        deadline = time.monotonic() + 5
        while scripts_loaded_and_connections(conn)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scripts_loaded_and_connections(conn)[0] > 0  # warmed while still a replica
        promote_replica_by_hand(cluster, "s0")
        client.refresh_topology()
        # The other replica's link to it is a connection too, made some time after REPLICAOF.
        other = cluster.shard("s0").replicas[1]
        wait_for(lambda: follows(other, successor), "the other replica following it")
        before = scripts_loaded_and_connections(conn)
        client.enqueue(number, "x", "first-after-failover")
        assert scripts_loaded_and_connections(conn) == before
        assert "first-after-failover" in held_ids(conn, number)


def follows(replica: ShardNode, primary: ShardNode) -> bool:
    info = replica.replication()
    return info.get("master_port") == primary.port and info.get("master_link_status") == "up"


def scripts_cached(conn: redis.Redis) -> bool:
    return all(conn.script_exists(*(script.sha for script in ALL_SCRIPTS)))


def test_a_replica_that_restarted_is_warmed_again_by_the_next_topology(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster, _client, _ = one_shard_of_two_replicas(start_cluster, make_client)
    replica = cluster.shard("s0").replicas[0]
    with replica.client() as conn:
        wait_for(lambda: scripts_cached(conn), "the replica warmed")
    replica.restart(replica_of=cluster.shard("s0").primary)
    with replica.client() as conn:
        assert not scripts_cached(conn)  # a restart empties the script cache
        republish_unchanged(cluster)
        wait_for(lambda: scripts_cached(conn), "the restarted replica warmed again")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


ESTABLISHED = "01"  # the `st` column of /proc/net/tcp


def bytes_waiting_at(port: int) -> int:
    """Bytes sent to the local listener on `port` that it has not read: the receive queues of
    its established connections, from /proc/net/tcp and tcp6 (no iproute2 needed)."""
    waiting = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == ESTABLISHED:
                waiting += int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue
    return waiting


def assert_a_write_held_by_a_stalled_primary_moves_when_a_failover_is_published(
    start_cluster: Callable[..., LocalCluster],
    make_client: Callable[..., RatequeueClient],
    *,
    old_primary_listed_as_replica: bool,
) -> None:
    # A socket timeout far beyond the test's patience: only the new topology can free the write.
    cluster, client, number = one_shard_of_two_replicas(
        start_cluster, make_client, wait_timeout_ms=30_000
    )
    client.enqueue(number, "before", "before-stall")
    stalled = cluster.shard("s0").primary
    stalled.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.enqueue, number, "held", "held-by-stall")
            wait_for(lambda: bytes_waiting_at(stalled.port) > 0, "the write sent to the stalled")
            promote_replica_by_hand(
                cluster, "s0", old_primary_listed_as_replica=old_primary_listed_as_replica
            )
            held.result(timeout=10)
        with cluster.shard("s0").replicas[0].client() as conn:
            assert "held-by-stall" in held_ids(conn, number)
    finally:
        stalled.signal(signal.SIGCONT)


def test_a_write_held_by_a_stalled_primary_moves_to_the_new_primary_when_it_is_published(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    assert_a_write_held_by_a_stalled_primary_moves_when_a_failover_is_published(
        start_cluster, make_client, old_primary_listed_as_replica=False
    )


def test_a_write_routed_to_a_primary_a_new_topology_moves_is_retried_at_once_on_the_new_one(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    # The stalled node stays listed (as a replica), so the client keeps its connections to it:
    # only the new topology's moving the shard's primary can free the write before its timeout.
    assert_a_write_held_by_a_stalled_primary_moves_when_a_failover_is_published(
        start_cluster, make_client, old_primary_listed_as_replica=True
    )


def clients_other_than(conn: redis.Redis) -> list[dict]:
    """The node's client connections except `conn`'s own."""
    own = str(conn.client_id())
    return [c for c in conn.client_list() if c["id"] != own]


def test_a_client_closes_its_connections_to_a_node_no_topology_lists(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster, client, number = one_shard_of_two_replicas(start_cluster, make_client)
    client.enqueue(number, "x", "on-the-old-primary")
    deposed = cluster.shard("s0").primary
    with deposed.client() as conn:
        assert clients_other_than(conn)  # the client's connection, open before the failover
        promote_replica_by_hand(cluster, "s0")  # the deposed primary is listed in forensics
        wait_for(lambda: not clients_other_than(conn), "the client's connections closed")


def test_a_replica_is_warmed_with_a_connection_for_each_of_the_first_writes_after_promotion(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster, _client, _ = one_shard_of_two_replicas(start_cluster, make_client)
    replica = cluster.shard("s0").replicas[0]
    with replica.client() as conn:

        def warmed() -> bool:
            from_client = [c for c in clients_other_than(conn) if c["flags"] == "N"]
            return len(from_client) >= WARM_CONNECTIONS

        wait_for(warmed, f"{WARM_CONNECTIONS} connections to the replica")


def test_background_work_that_fails_is_logged_and_its_error_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unretrieved: list[dict] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unretrieved.append(c))
        client = AsyncRatequeueClient("redis://127.0.0.1:1")

        async def fails() -> None:
            raise ConnectionError("connection reset")

        client._spawn(fails(), "closing 127.0.0.1:1")
        await asyncio.wait(client._topology_work)
        await client.close()

    with caplog.at_level(logging.DEBUG, logger="ratequeue.client"):
        asyncio.run(scenario())
    gc.collect()  # an unretrieved task error is reported when the task is collected
    assert "closing 127.0.0.1:1 failed: connection reset" in caplog.text
    assert unretrieved == []


def test_a_closing_client_starts_no_background_work() -> None:
    async def scenario() -> int:
        client = AsyncRatequeueClient("redis://127.0.0.1:1")
        await client.close()
        work = asyncio.sleep(0)
        client._spawn(work, "late work")
        assert work.cr_frame is None  # closed, not left never awaited
        return len(client._topology_work)

    assert asyncio.run(scenario()) == 0


def one_shard_on(port: int, epoch: int) -> Topology:
    primary = NodeRef(name=f"n{port}", host="127.0.0.1", port=port)
    return Topology(
        epoch=epoch, shards=[Shard(id="s0", slots=(0, 16383), epoch=epoch, primary=primary)]
    )


def test_a_call_cancelled_from_outside_stays_cancelled_when_its_primary_also_moves() -> None:
    async def scenario() -> None:
        client = AsyncRatequeueClient("redis://127.0.0.1:1")
        client._accept(one_shard_on(1, epoch=1))
        started = asyncio.Event()

        async def held(_shard: Shard) -> None:
            started.set()
            await asyncio.Event().wait()

        call = asyncio.create_task(client._with_retries(held, lambda t: t.shard("s0")))
        await started.wait()
        call.cancel()
        client._accept(one_shard_on(2, epoch=2))
        with pytest.raises(asyncio.CancelledError):
            await call
        await client.close()

    asyncio.run(scenario())


def test_a_call_routed_to_a_shard_a_newer_topology_drops_is_retryable() -> None:
    async def scenario() -> None:
        settings = ClientSettings(retry=ClientRetryPolicy(max_attempts=1))
        client = AsyncRatequeueClient("redis://127.0.0.1:1", settings)
        client._accept(one_shard_on(1, epoch=1))

        async def never(_shard: Shard) -> None:
            raise AssertionError("routed to a shard the topology does not list")

        with pytest.raises(ShardUnavailable, match="s9"):
            await client._with_retries(never, lambda t: t.shard("s9"))
        await client.close()

    asyncio.run(scenario())


def test_a_node_refuses_writes_for_an_epoch_it_was_not_made_primary_in(
    cluster: LocalCluster,
) -> None:
    async def write_with_epoch(epoch: int) -> None:
        node = aioredis.Redis.from_url(cluster.shard("s0").primary.url)
        try:
            message = OutgoingMessage("m", "+14155550100", 1, Rate(per_second=1, burst=1), '"x"')
            await ShardQueue("s0", node).enqueue_batch(
                epoch, [message], min_replicas=0, wait_timeout_ms=100
            )
        finally:
            await node.aclose()

    with pytest.raises(StaleEpoch, match="node=1 client=2"):
        asyncio.run(write_with_epoch(2))


def test_a_number_lands_in_the_slot_cluster_keyslot_gives_it(tmp_path: Path) -> None:
    port = free_port((CLIENT_HOST,))
    # The cluster bus defaults to port + 10000, past 65535 for half the ephemeral range.
    bus_port = free_port((CLIENT_HOST,))
    server = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", CLIENT_HOST, "--save", "",
         "--cluster-enabled", "yes", "--cluster-port", str(bus_port), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        conn = redis.Redis(CLIENT_HOST, port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while not _answers(conn) and time.monotonic() < deadline:
            time.sleep(0.02)
        for number in ["+14155550100", "+15005550006", "+447700900123", "+81312345678"]:
            assert slot_for(number) == conn.execute_command("CLUSTER KEYSLOT", number)
    finally:
        server.kill()
        server.wait(timeout=10)


def _answers(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.ConnectionError:
        return False


def test_a_client_says_since_when_it_routes_by_its_epoch_and_a_reread_does_not_move_it() -> None:
    async def scenario() -> None:
        client = AsyncRatequeueClient("redis://127.0.0.1:1")
        assert client.epoch_taken_at is None
        before_first = time.time()
        client._accept(one_shard_on(1, epoch=1))
        first = client.epoch_taken_at
        assert first is not None and before_first <= first <= time.time()
        await asyncio.sleep(0.02)
        client._accept(one_shard_on(1, epoch=1))  # the same epoch read again
        assert client.epoch_taken_at == first
        before_newer = time.time()
        client._accept(one_shard_on(2, epoch=2))
        taken = client.epoch_taken_at
        assert taken is not None and first < before_newer <= taken <= time.time()
        await client.close()

    asyncio.run(scenario())
