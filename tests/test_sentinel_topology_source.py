"""The topology source that follows Redis Sentinel, against three real redis-sentinel processes
(quorum 2) watching one shard of real redis-server nodes: read all through a failover, no map
ever names the old primary under a newer epoch, the epochs never fall, and the primary it moves
to answers as a master; with one sentinel paused it still answers at once; a `+switch-master`
told after the subscription sat idle for longer than the read timeout is still heard;
`ratequeue topology --topology-backend sentinel` prints the map with Sentinel's primaries.

Not for: the routing rules case by case (tests/unit/test_sentinel_topology.py), or the API on a
whole testbed (tests/test_testbed_on_sentinel.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from chaos.testbed import sentinel_managed_args
from common.sentinel_processes import (
    SentinelProcess,
    SentinelTimers,
    promotable_replicas,
    start_sentinels,
)
from ratequeue.cli import app as ratequeue_app
from ratequeue.local_cluster import LocalCluster
from ratequeue.sentinel_topology import RedisSentinelLink, SentinelTopologySource
from ratequeue.topology import Topology
from tests.e2e.support import wait_for

# Above Sentinel's 1 s reconnection period, or it may fail the shard over a second time right
# after the first (README, "Under Redis Sentinel").
FAST = SentinelTimers(down_after_ms=2000, failover_timeout_ms=5000)

pytestmark = pytest.mark.slow  # three sentinels and a failover (about 6 s)


@pytest.fixture
def watched_shard(tmp_path: Path) -> Iterator[tuple[LocalCluster, list[SentinelProcess]]]:
    cluster = LocalCluster.start(tmp_path / "redis", shards=1, replicas=2,
                                 node_args=sentinel_managed_args(1))  # fmt: skip
    sentinels: list[SentinelProcess] = []
    try:
        primary = cluster.shard("s0").primary
        masters = {"s0": (primary.peer_host, primary.port)}
        sentinels = start_sentinels(tmp_path / "sentinel", masters, FAST)
        yield cluster, sentinels
    finally:
        for sentinel in sentinels:
            os.kill(sentinel.pid, signal.SIGCONT)  # a paused one must be able to stop
            sentinel.stop()
        cluster.stop()


def replicas_promotable(sentinel: SentinelProcess) -> int:
    with sentinel.client(timeout=2) as conn:
        return promotable_replicas(conn, "s0")


def every_sentinel_sees_both_replicas(sentinels: list[SentinelProcess]) -> None:
    """Both replicas known and heard from by every sentinel: only then does `SENTINEL FAILOVER`
    find one to promote (knowing of them is not enough: NOGOODSLAVE in a CI run)."""
    wait_for("every sentinel to be able to promote both replicas",
             lambda: all(replicas_promotable(s) == 2 for s in sentinels))  # fmt: skip


async def maps_through_a_failover(source: SentinelTopologySource, cluster: LocalCluster,
                                  deadline: float) -> list[Topology]:  # fmt: skip
    """Every map read every 20 ms from before the primary's kill until one names another
    primary, and a second more."""
    primary = cluster.shard("s0").primary
    first = await source.load()
    assert first is not None
    maps = [first]
    os.kill(primary.pid, signal.SIGKILL)
    moved_at = None
    while time.monotonic() < deadline:
        found = await source.load()
        assert found is not None
        maps.append(found)
        if moved_at is None and found.shard("s0").primary.name != primary.name:
            moved_at = time.monotonic()
        if moved_at is not None and time.monotonic() > moved_at + 1:
            break
        await asyncio.sleep(0.02)
    return maps


def answers_as_master(port: int) -> bool:
    with redis.Redis("127.0.0.1", port, socket_timeout=2) as conn:
        return conn.info("replication")["role"] == "master"


def test_through_a_failover_no_map_names_the_old_primary_under_a_newer_epoch(
    watched_shard: tuple[LocalCluster, list[SentinelProcess]],
) -> None:
    cluster, sentinels = watched_shard
    every_sentinel_sees_both_replicas(sentinels)
    old = cluster.shard("s0").primary.name
    addresses = [(s.host, s.port) for s in sentinels]

    async def follow() -> list[Topology]:
        source = SentinelTopologySource.over_control_store(cluster.control.url, addresses)
        try:
            return await maps_through_a_failover(source, cluster, time.monotonic() + 60)
        finally:
            await source.aclose()

    maps = asyncio.run(follow())
    epochs = [m.epoch for m in maps]
    assert epochs == sorted(epochs), epochs
    newer = [m for m in maps if m.epoch > maps[0].epoch]
    assert newer, "no map after the failover"
    assert all(m.shard("s0").primary.name != old for m in newer), [
        (m.epoch, m.shard("s0").primary.name) for m in maps
    ]
    promoted = newer[0].shard("s0").primary
    assert promoted.name in {r.name for r in maps[0].shard("s0").replicas}
    assert answers_as_master(promoted.port)


def test_with_one_sentinel_paused_the_map_is_read_at_once(
    watched_shard: tuple[LocalCluster, list[SentinelProcess]],
) -> None:
    cluster, sentinels = watched_shard
    addresses = [(s.host, s.port) for s in sentinels]
    os.kill(sentinels[0].pid, signal.SIGSTOP)

    async def read() -> Topology | None:
        # Waiting for the paused one would take the 30 s timeout; the read gets 10.
        source = SentinelTopologySource.over_control_store(
            cluster.control.url, addresses, timeout=30
        )
        try:
            return await asyncio.wait_for(source.load(), 10)
        finally:
            await source.aclose()

    found = asyncio.run(read())
    assert found is not None
    assert found.shard("s0").primary.name == cluster.shard("s0").primary.name


def test_a_switch_told_after_the_subscription_sat_idle_is_heard(
    watched_shard: tuple[LocalCluster, list[SentinelProcess]],
) -> None:
    _, sentinels = watched_shard
    every_sentinel_sees_both_replicas(sentinels)
    told = sentinels[0]

    async def hear() -> bool:
        # A read timeout of 0.5 s; after an error the link would wait 60 s to subscribe again.
        link = RedisSentinelLink(told.host, told.port, timeout=0.5)
        switched = asyncio.Event()
        listening = asyncio.create_task(link.follow_switches(switched, pause=60))
        try:
            await asyncio.sleep(2.5)  # idle: no failover yet
            with told.client(timeout=5) as conn:
                conn.execute_command("SENTINEL", "FAILOVER", "s0")
            await asyncio.wait_for(switched.wait(), 30)
            return True
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await link.aclose()

    assert asyncio.run(hear())


def test_the_topology_command_prints_the_primaries_sentinel_names(
    watched_shard: tuple[LocalCluster, list[SentinelProcess]],
) -> None:
    cluster, sentinels = watched_shard
    every_sentinel_sees_both_replicas(sentinels)
    with sentinels[0].client(timeout=5) as conn:
        conn.execute_command("SENTINEL", "FAILOVER", "s0")
    old = cluster.shard("s0").primary.name
    addresses = ",".join(f"{s.host}:{s.port}" for s in sentinels)
    command = ["topology", "--control", cluster.control.url, "--topology-backend", "sentinel",
               "--sentinels", addresses]  # fmt: skip

    def primary_printed() -> str | None:
        result = CliRunner().invoke(ratequeue_app, command)
        if result.exit_code != 0:
            return None
        primary = json.loads(result.stdout)["shards"][0]["primary"]["name"]
        return primary if primary != old else None

    promoted = wait_for("the command to print the promoted primary", primary_printed, timeout=60)
    assert promoted in {r.name for r in cluster.shard("s0").replicas}
