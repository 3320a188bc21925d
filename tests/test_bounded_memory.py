"""Bounded memory, over real HTTP and real redis-server shards: a message body and a number's
queue have documented maximums, refused with a 4xx naming the limit and nothing written; shard
nodes boot with a `maxmemory` and the `noeviction` policy, and a full shard answers 507
`shard_full` (nothing half-written) while consumers can still drain it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from common.errors import InvalidSetting
from lazarus_lite.actuators import LocalProcessActuator
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.steps.ratequeue_promotion import write_once_replicas_follow
from ratequeue.errors import ShardFull
from ratequeue.local_cluster import LocalCluster, ShardNode
from ratequeue.membership import boot_arguments
from ratequeue.rates import Rate
from ratequeue.scripts import COUNT_KEY, PREFIX, READY_KEY, state_key
from ratequeue.shard import OutgoingMessage, ShardQueue
from tests.conftest import ServedApi, shard_key_count
from tests.test_http_api import ON_S0, assert_error, enqueue, messages_url
from tests.test_topology_and_routing import promote_replica_by_hand

# A body with no text costs one segment, whatever its size.
BIG_BODY = {"data": "x" * 60_000}


def memory_settings(node: ShardNode) -> tuple[str, str]:
    """The node's (maxmemory in bytes, maxmemory-policy), as it runs."""
    with node.client() as conn:
        return (conn.config_get("maxmemory")["maxmemory"],
                conn.config_get("maxmemory-policy")["maxmemory-policy"])  # fmt: skip


def stored_state(cluster: LocalCluster) -> tuple[int, bytes | None, int, int, bytes | None]:
    """(keys, messages held, fields of the numbers' hashes, dedup entries, write barrier) on s0's
    primary."""
    with cluster.shards[0].primary.client() as conn:
        fields = sum(conn.hlen(key) for key in conn.scan_iter(state_key("*")))
        seen = sum(conn.hlen(key) for key in conn.scan_iter(f"{PREFIX}seen:*"))
        return (shard_key_count(cluster), conn.get(COUNT_KEY), fields, seen,
                conn.get("rq:barrier"))  # fmt: skip


def test_a_body_over_the_per_message_limit_answers_413_naming_the_limit_and_writes_nothing(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster, max_message_bytes=100)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        before = shard_key_count(cluster)
        response = http.post(messages_url(ON_S0), json={"id": "big", "body": "a" * 99})
        assert_error(response, 413, "message_too_large", "'body'", "101 bytes", "at most 100")
        assert shard_key_count(cluster) == before


def test_a_body_of_exactly_the_per_message_limit_is_accepted(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster, max_message_bytes=100)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        body = "é" * 49  # 98 bytes of UTF-8 and two quotes: the limit exactly
        assert len(json.dumps(body, ensure_ascii=False).encode()) == 100
        assert enqueue(http, ON_S0, body, "exact")["duplicate"] is False


def test_a_number_at_its_segment_maximum_answers_429_naming_it_and_writes_nothing(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster, max_number_segments=2)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        http.put(f"/v1/numbers/{ON_S0}/rate", json={"per_second": 1000}).raise_for_status()
        enqueue(http, ON_S0, "one", "m-1")
        enqueue(http, ON_S0, "two", "m-2")
        before = shard_key_count(cluster)
        response = http.post(messages_url(ON_S0), json={"id": "m-3", "body": "three"})
        assert_error(response, 429, "queue_full", "limit of 2", "most segments one number")
        assert shard_key_count(cluster) == before
        info = http.get(f"/v1/numbers/{ON_S0}").json()
        assert (info["depth"], info["capacity_segments"]) == (2, 2)


def test_shard_nodes_boot_with_their_maxmemory_and_never_evict_also_after_a_restart(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.start(tmp_path / "limited", shards=1, replicas=1, maxmemory="64mb")
    try:
        replica = cluster.shards[0].replicas[0]
        replica.restart(replica_of=cluster.shards[0].primary)
        for node in [cluster.shards[0].primary, replica]:
            assert memory_settings(node) == (str(64 * 1024 * 1024), "noeviction")
    finally:
        cluster.stop()


def test_a_memory_limit_that_is_not_a_size_is_refused_naming_maxmemory() -> None:
    with pytest.raises(ValueError, match="maxmemory 'lots'"):
        boot_arguments("lots")


def test_a_full_shard_answers_507_shard_full_writes_nothing_and_drains_to_take_writes_again(
    tmp_path: Path, serve_api: Callable[..., ServedApi]
) -> None:
    cluster = LocalCluster.start(tmp_path / "tiny", shards=1, replicas=1, maxmemory="4mb")
    try:
        api = serve_api(cluster)
        with httpx.Client(base_url=api.url, timeout=10) as http:
            # Fast enough that one dequeue can drain the number.
            rate = {"per_second": 1000, "burst": 1000}
            http.put(f"/v1/numbers/{ON_S0}/rate", json=rate).raise_for_status()
            accepted = 0
            for index in range(200):  # 12 MB of bodies: far past the limit
                stored_before = stored_state(cluster)
                response = http.post(messages_url(ON_S0),
                                     json={"id": f"m-{index}", "body": BIG_BODY})  # fmt: skip
                if response.status_code != 201:
                    break
                accepted += 1
            message = assert_error(response, 507, "shard_full", "s0", "maxmemory")
            assert stored_state(cluster) == stored_before
            assert "Traceback" not in message
            assert int(response.headers["retry-after"]) >= 1
            assert accepted > 0
            # Nothing of the refused message was written: its number holds what was accepted.
            assert http.get(f"/v1/numbers/{ON_S0}").json()["depth"] == accepted
            # Consumers still drain a full shard, and room comes back as they acknowledge.
            leased = http.post("/v1/messages:dequeue", json={"max": 1000, "lease_seconds": 60})
            assert leased.status_code == 200, leased.text
            receipts = [m["receipt"] for m in leased.json()["messages"]]
            assert len(receipts) == accepted
            acked = http.post("/v1/messages:ack", json={"receipts": receipts})
            assert acked.json() == {"acked": accepted}
            assert enqueue(http, ON_S0, "room again", f"m-{accepted}")["duplicate"] is False
    finally:
        cluster.stop()


def test_the_testbed_refuses_a_shard_memory_limit_that_is_not_a_size_and_starts_nothing(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from chaos.cli import app; app()", "testbed", "up", "--dir",
         str(tmp_path / "bed"), "--shard-maxmemory", "lots"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "--shard-maxmemory" in result.stdout and "'lots'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "bed" / "testbed.json").exists()


def test_a_replacement_the_local_actuator_starts_has_the_shard_s_memory_limit(
    tmp_path: Path,
) -> None:
    actuator = LocalProcessActuator(tmp_path / "actuator", maxmemory="64mb")
    node = asyncio.run(actuator.provision_replica("s0", "s0-replica-e1"))
    replacement = ShardNode("s0-replica-e1", "replica", "s0", node.port, tmp_path,
                            pid=actuator.provisioned()[0]["pid"])  # fmt: skip
    try:
        assert memory_settings(replacement) == (str(64 * 1024 * 1024), "noeviction")
    finally:
        replacement.stop()


def test_a_controller_refuses_a_replica_memory_limit_that_is_not_a_size_naming_it() -> None:
    with pytest.raises(InvalidSetting, match="replica_maxmemory"):
        ControllerSettings.parse(node_id="n1", control_url="redis://127.0.0.1:1/0",
                                 replica_maxmemory="lots")  # fmt: skip


def fill_to_shard_full(primary: ShardNode, epoch: int) -> int:
    """Enqueue batches on `primary` until it answers ShardFull; returns how many messages it took.
    Redis checks the limit before a script, which then writes its whole batch: the last batch
    accepted takes the data (and so every replica's copy of it) past maxmemory. One shard: every
    number is on it."""

    async def fill() -> int:
        rate = Rate(per_second=1000, burst=1000)
        async with aioredis.Redis.from_url(primary.url) as conn:
            queue = ShardQueue("s0", conn)
            for batch in range(1000):
                # Small messages on many numbers: what they cost stored is many times their size.
                messages = [OutgoingMessage(f"m-{batch}-{index}", f"+1415{batch:03d}{index:04d}",
                                            1, rate, '"x"')
                            for index in range(500)]  # fmt: skip
                try:
                    await queue.enqueue_batch(epoch, messages, min_replicas=1, wait_timeout_ms=2000)
                except ShardFull:
                    return batch * len(messages)
        raise AssertionError("the shard never filled up")

    return asyncio.run(fill())


def test_a_full_shard_fails_over_and_its_new_primary_serves_dequeues(tmp_path: Path) -> None:
    cluster = LocalCluster.start(tmp_path / "full", shards=1, replicas=2, maxmemory="2mb")
    try:
        shard = cluster.shards[0]
        accepted = fill_to_shard_full(shard.primary, cluster.publish_initial_topology().epoch)
        assert accepted > 0
        shard.primary.signal(signal.SIGKILL)
        assert shard.primary.process is not None
        shard.primary.process.wait(timeout=5)

        promote_replica_by_hand(cluster, "s0")  # writes the fence, over maxmemory
        new_primary = shard.replicas[0]

        async def verify_and_drain() -> list[str]:
            async with aioredis.Redis.from_url(new_primary.url) as conn:
                await write_once_replicas_follow(conn, deadline=time.monotonic() + 10)
                assert int(await conn.execute_command("WAIT", 1, 2000)) == 1
                leased = await ShardQueue("s0", conn).dequeue(1000, 60_000)
                return [message.id for message in leased]

        assert len(asyncio.run(verify_and_drain())) == accepted
    finally:
        cluster.stop()


def test_a_full_shard_leases_and_acks_also_when_a_dequeue_first_reschedules_a_number(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.start(tmp_path / "full", shards=1, replicas=1, maxmemory="2mb")
    try:
        epoch = cluster.publish_initial_topology().epoch
        primary = cluster.shards[0].primary
        with primary.client() as conn:
            # ON_S0 is due by its ready time, but its rate was lowered since it was scheduled:
            # the dequeue's first write is the number's reschedule.
            conn.hset("rq:rates", ON_S0, Rate(per_second=1, burst=1).encode())
            conn.zadd(READY_KEY, {ON_S0: 0})
            conn.hset(state_key(ON_S0), "t", int(time.time() * 1000) + 3_600_000)
        accepted = fill_to_shard_full(primary, epoch)
        keys_before = shard_key_count(cluster)

        async def drain() -> tuple[int, int]:
            async with aioredis.Redis.from_url(primary.url) as conn:
                queue = ShardQueue("s0", conn)
                leased = await queue.dequeue(2000, 60_000)
                return len(leased), await queue.ack([message.receipt for message in leased])

        assert asyncio.run(drain()) == (accepted, accepted)
        assert shard_key_count(cluster) < keys_before  # acknowledged messages are gone
    finally:
        cluster.stop()


def test_a_batch_to_a_full_shard_answers_507_shard_full_in_each_result_and_writes_nothing(
    tmp_path: Path, serve_api: Callable[..., ServedApi]
) -> None:
    cluster = LocalCluster.start(tmp_path / "full", shards=1, replicas=1, maxmemory="2mb")
    try:
        fill_to_shard_full(cluster.shards[0].primary, cluster.publish_initial_topology().epoch)
        api = serve_api(cluster)
        stored_before = stored_state(cluster)
        with httpx.Client(base_url=api.url, timeout=10) as http:
            response = http.post("/v1/messages:batch", json={"messages": [
                {"number": ON_S0, "id": "one", "body": "x"},
                {"number": ON_S0, "id": "two", "body": "y"},
            ]})  # fmt: skip
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["status"], r["error"]["code"]) for r in results] == [(507, "shard_full")] * 2
        assert stored_state(cluster) == stored_before
    finally:
        cluster.stop()


def test_a_batch_of_large_messages_a_shard_has_room_for_is_taken_whole(
    tmp_path: Path, serve_api: Callable[..., ServedApi]
) -> None:
    # 65 bodies of 60 KB (3.9 MB): stored, the shard's memory peaks about 7.5 MB of its 9. In
    # one script call it would need more for a moment (the call's arguments sit in memory as
    # the query buffer and again as argv): every message was refused as a full shard.
    cluster = LocalCluster.start(tmp_path / "room", shards=1, replicas=1, maxmemory="9mb")
    try:
        api = serve_api(cluster)
        with httpx.Client(base_url=api.url, timeout=10) as http:
            response = http.post("/v1/messages:batch", json={"messages": [
                {"number": ON_S0, "id": f"big-{i}", "body": BIG_BODY} for i in range(65)
            ]})  # fmt: skip
        assert response.status_code == 200, response.text
        assert [r["status"] for r in response.json()["results"]] == [201] * 65, response.text
    finally:
        cluster.stop()
