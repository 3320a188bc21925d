"""The shard watch on real redis-server processes: a primary nobody reported is reported once by
the controllers, one already reported is not, and a shard whose API writes keep failing is
reported unwritable with the API's evidence even though its primary answers."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.redis_processes import free_port
from detection.events import Event, new_event
from detection.sensor import incident_key
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import open_coordination_store
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.shard_watch import (
    ShardWatch,
    WatchSettings,
    Writability,
    missing_replicas,
    watch_forever,
)
from ratequeue.errors import ShardUnavailable
from ratequeue.etcd_topology import ETCD_TOPOLOGY_KEY
from ratequeue.local_cluster import LocalCluster, ShardNode, wait_for_replicas_in_sync
from ratequeue.topology import NodeRef
from ratequeue.write_failures import WRITE_FAILURES_KEY, WriteFailureReporter
from tests.etcd_topology import store_address_of

QUICK = WatchSettings(
    interval=0.05, sensor_silence_after=0.2, self_report_after=0.3, unwritable_after=0.6
)


class PublishedEvents:
    """The event stream as the watch sees it: where its reports go."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> str:
        self.events.append(event)
        return str(len(self.events))


async def claim_incident(store: CoordinationStore, seconds_ago: float) -> None:
    """The controller's claim on s0-primary's incident, as if taken `seconds_ago`."""
    key = incident_key("ratequeue", "s0", "s0-primary", 1)
    await store.incidents.claim("RedisMasterDown", key, "event", ttl=600 - seconds_ago)


def api_reporter(cluster: LocalCluster) -> WriteFailureReporter:
    """An API node's reporter of failed writes: into the control Redis on both backends (the
    record log stays there); the caller closes its connection (`reporter.control`)."""
    return WriteFailureReporter(aioredis.Redis.from_url(cluster.control.url), "api-1")


def heartbeat_from(cluster: LocalCluster) -> Event:
    """A heartbeat of the sensor beside s0's replica, watching s0-primary at epoch 1."""
    return new_event(
        "SensorHeartbeat", environment="dev", region="local", service="ratequeue", shard="s0",
        host=cluster.shards[0].replicas[0].ref().address, source="sensor-1",
        data={"primary": "s0-primary", "ok": True, "heartbeat_every": 5.0, "shard_epoch": 1},
    )  # fmt: skip


async def watch_for(
    cluster: LocalCluster,
    seconds: float,
    nodes: int = 1,
    before: Callable | None = None,
    settings: WatchSettings = QUICK,
) -> list[Event]:
    """Run `nodes` controller nodes' watches for `seconds`, on the store `cluster`'s map is in
    (`store_address_of`); returns what they published."""
    store = open_coordination_store(store_address_of(cluster))
    stream = PublishedEvents()
    try:
        if before is not None:
            await before(store)
        keepers = [ShardKeeper(store, f"n{i}", "demote") for i in range(nodes)]
        watches = [
            ShardWatch(store, stream, keeper, f"n{i}", settings) for i, keeper in enumerate(keepers)
        ]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for watch in watches:
                await watch.run_once()
            await asyncio.sleep(settings.interval)
        return stream.events
    finally:
        await store.aclose()


def test_a_primary_nobody_reported_is_reported_once_by_the_controllers(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)
    events = asyncio.run(watch_for(cluster, 1.5, nodes=3))
    [report] = [e for e in events if e.type == "RedisMasterDown"]
    assert report.source.startswith("lazarus:")
    assert report.data["primary"] == "s0-primary" and report.data["shard_epoch"] == 1
    assert report.incident_key == incident_key("ratequeue", "s0", "s0-primary", 1)


def test_a_primary_a_sensor_reported_is_not_reported_again(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)

    async def a_sensor_reported_it(store: CoordinationStore) -> None:
        await claim_incident(store, seconds_ago=0)

    events = asyncio.run(watch_for(cluster, 1.0, before=a_sensor_reported_it))
    assert [e for e in events if e.type == "RedisMasterDown"] == []


def test_a_primary_that_stays_down_after_a_report_long_ago_is_reported_again(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # The first report was declined (say, a gate was closed) and its sensors are dead: the
    # controllers file again, so the decision is taken anew instead of waiting out the claim.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)

    async def reported_a_minute_ago(store: CoordinationStore) -> None:
        await claim_incident(store, seconds_ago=60)

    events = asyncio.run(watch_for(cluster, 1.0, before=reported_a_minute_ago))
    assert len([e for e in events if e.type == "RedisMasterDown"]) == 1


def test_a_controller_that_has_not_listened_long_enough_leaves_detection_to_the_sensors(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # Just started, it has heard no heartbeat yet: that is no proof the sensors are dead.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)
    listening = WatchSettings(interval=0.05, sensor_silence_after=5.0, self_report_after=0.3)
    events = asyncio.run(watch_for(cluster, 1.0, settings=listening))
    assert [e for e in events if e.type == "RedisMasterDown"] == []


def test_a_primary_its_live_sensors_speak_for_is_not_reported_by_the_controllers(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # This node cannot reach the primary, but a sensor's heartbeats still come: detection is
    # the sensors' (they report a primary they see down), not this node's.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)

    async def a_live_sensor(store: CoordinationStore) -> None:
        await store.sensors.record_heartbeat(heartbeat_from(cluster))

    events = asyncio.run(watch_for(cluster, 1.0, before=a_live_sensor))
    assert [e for e in events if e.type == "RedisMasterDown"] == []


def test_a_shard_whose_api_writes_keep_failing_is_reported_unwritable_with_that_evidence(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)

    async def writes_keep_failing(store: CoordinationStore) -> None:
        reporter = api_reporter(cluster)
        try:
            await reporter.failed("s0", ShardUnavailable("shard s0: primary unreachable"))
            # Still failing a moment later (the run is kept fresh while it lasts).
            await asyncio.sleep(QUICK.self_report_after + 0.1)
            reporter._flushed_at.clear()
            await reporter.failed("s0", ShardUnavailable("shard s0: primary unreachable"))
            await reporter.drain()
        finally:
            await reporter.control.aclose()

    events = asyncio.run(watch_for(cluster, 1.5, before=writes_keep_failing))
    [report] = [e for e in events if e.type == "ShardUnwritable"]
    assert "the API's writes to it have failed 2 times" in report.data["reason"]
    assert "primary unreachable" in report.data["reason"]
    assert [e for e in events if e.type == "RedisMasterDown"] == []  # evidence, not an action


def test_the_first_successful_write_clears_the_apis_report(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=0)

    async def fail_then_succeed() -> int:
        control = aioredis.Redis.from_url(cluster.control.url)
        try:
            reporter = WriteFailureReporter(control, "api-1")
            await reporter.failed("s0", ShardUnavailable("down"))
            await reporter.drain()
            assert await control.hlen(WRITE_FAILURES_KEY) == 1
            await reporter.succeeded("s0")
            await reporter.drain()
            return int(await control.hlen(WRITE_FAILURES_KEY))
        finally:
            await control.aclose()

    assert asyncio.run(fail_then_succeed()) == 0


@pytest.mark.redis_control_store(
    "the control Redis unreachable from the start; etcd's loss of quorum is in test_store_outage.py"
)
def test_a_node_that_cannot_reach_the_control_store_says_so_once() -> None:
    told: list[str] = []

    async def blind_for_a_while() -> None:
        control = aioredis.Redis(
            port=free_port(("127.0.0.1",)), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
        )
        store = RedisCoordinationStore(control)
        keeper = ShardKeeper(store, "n1", "demote")
        watch = ShardWatch(store, PublishedEvents(), keeper, "n1", QUICK)

        async def tell(reason: str) -> None:
            told.append(reason)

        task = asyncio.create_task(watch_forever(watch, on_blind=tell))
        await asyncio.sleep(QUICK.unwritable_after + 1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await control.aclose()

    asyncio.run(blind_for_a_while())
    [reason] = told
    assert "controller n1 cannot watch the shards" in reason


async def lose_the_map(cluster: LocalCluster, store: CoordinationStore) -> None:
    """The store comes back without the topology: on Redis, the control Redis restarted empty;
    on etcd, the map's key deleted (etcd keeps its data through a member's restart)."""
    if store_address_of(cluster).coordination_backend == "etcd":
        await store.client.delete(ETCD_TOPOLOGY_KEY)  # type: ignore[attr-defined]
    else:
        cluster.control.restart(empty=True)


def test_a_node_whose_store_came_back_without_the_topology_says_so_once(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    told: list[str] = []

    async def map_gone_for_a_while() -> None:
        store = open_coordination_store(store_address_of(cluster))
        watch = ShardWatch(store, PublishedEvents(), ShardKeeper(store, "n1", "demote"), "n1",
                           QUICK)  # fmt: skip

        async def tell(reason: str) -> None:
            told.append(reason)

        try:
            await watch.run_once()  # the map read
            await lose_the_map(cluster, store)
            task = asyncio.create_task(watch_forever(watch, on_blind=tell))
            await asyncio.sleep(QUICK.unwritable_after + 1.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await store.aclose()

    asyncio.run(map_gone_for_a_while())
    [reason] = told
    assert "controller n1 cannot watch the shards" in reason
    assert "its topology is gone" in reason and "s0 (primary s0-primary)" in reason


def test_sensors_are_not_reported_silent_before_the_watch_could_hear_them(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # A controller (re)starting after an outage finds only old heartbeats: the sensors had no
    # chance to be heard yet, so that is no silence of theirs.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)

    async def an_old_heartbeat(store: CoordinationStore) -> None:
        heartbeat = heartbeat_from(cluster)
        old = heartbeat.model_copy(update={"occurred_at": heartbeat.occurred_at - timedelta(60)})
        await store.sensors.record_heartbeat(old)

    listening = WatchSettings(interval=0.05, sensor_silence_after=5.0)
    events = asyncio.run(watch_for(cluster, 1.0, before=an_old_heartbeat, settings=listening))
    assert [e for e in events if e.type == "SensorSilent"] == []


def test_a_shard_unwritable_a_second_time_is_reported_a_second_time(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)

    async def two_episodes() -> list[Event]:
        store = open_coordination_store(store_address_of(cluster))
        stream = PublishedEvents()
        watch = ShardWatch(store, stream, ShardKeeper(store, "n1", "demote"), "n1", QUICK)
        reporter = api_reporter(cluster)

        async def watch_while(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await watch.run_once()
                await asyncio.sleep(QUICK.interval)

        try:
            for _ in range(2):
                await reporter.failed("s0", ShardUnavailable("primary unreachable"))
                await asyncio.sleep(QUICK.self_report_after + 0.1)
                reporter._flushed_at.clear()
                await reporter.failed("s0", ShardUnavailable("primary unreachable"))
                await reporter.drain()
                await watch_while(1.2)  # past the bound: reported, flagged
                await reporter.succeeded("s0")
                await reporter.drain()
                await watch_while(0.3)  # writable again: the flag and the claim go
            return stream.events
        finally:
            await store.aclose()
            await reporter.control.aclose()

    reports = [e for e in asyncio.run(two_episodes()) if e.type == "ShardUnwritable"]
    assert len(reports) == 2 and reports[0].incident_key != reports[1].incident_key


DEGRADED = replace(QUICK, degraded_after=1.0)


class Watching:
    """Three controller nodes' watches over `cluster`, kept between phases of a test (each node
    keeps its own clock of what it saw missing); `published` holds each report with when it
    was filed (monotonic)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.store = open_coordination_store(store_address_of(cluster))
        self.stream = PublishedEvents()
        self.watches = [
            ShardWatch(self.store, self.stream, ShardKeeper(self.store, f"n{i}", "demote"),
                       f"n{i}", DEGRADED)
            for i in range(3)
        ]  # fmt: skip
        self.published: list[tuple[float, Event]] = []

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for watch in self.watches:
                before = len(self.stream.events)
                await watch.run_once()
                now = time.monotonic()
                self.published += [(now, e) for e in self.stream.events[before:]]
            await asyncio.sleep(DEGRADED.interval)

    def degraded(self) -> list[tuple[float, Event]]:
        return [(at, e) for at, e in self.published if e.type == "ShardDegraded"]

    async def __aenter__(self) -> Watching:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.store.aclose()


def kill(node: ShardNode) -> None:
    node.process.send_signal(signal.SIGKILL)
    node.process.wait()


def test_a_listed_replica_killed_is_reported_degraded_once_after_degraded_after(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    dead = cluster.shards[0].replicas[1]

    async def watch() -> tuple[float, Watching]:
        async with Watching(cluster) as watching:
            await watching.run(0.3)  # the shard whole: nothing to report
            kill(dead)
            killed_at = time.monotonic()
            await watching.run(DEGRADED.degraded_after + 1.5)
            return killed_at, watching

    killed_at, watching = asyncio.run(watch())
    [(filed_at, report)] = watching.degraded()
    assert filed_at - killed_at >= DEGRADED.degraded_after
    assert report.data["replica"] == dead.name and report.data["missing"] == [dead.name]
    assert report.data["listed"] == 2 and report.data["healthy"] == 1
    assert report.host == dead.ref().address and report.source.startswith("lazarus:n")
    assert dead.name in report.data["reason"] and "1 of its 2 listed" in report.data["reason"]
    assert time.time() - report.data["missing_since"] >= DEGRADED.degraded_after
    assert [e for _, e in watching.published if e.type != "ShardDegraded"] == []


def test_a_replica_that_comes_back_ends_its_degraded_episode(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]

    async def two_losses() -> tuple[list[int], Watching]:
        counts = []
        async with Watching(cluster) as watching:
            for _ in range(2):
                kill(replica)
                await watching.run(DEGRADED.degraded_after + 1.0)  # reported
                await asyncio.to_thread(replica.restart, replica_of=primary)
                # Healthy again, for longer than the bound: no report while so.
                await watching.run(DEGRADED.degraded_after + 0.5)
                counts.append(len(watching.degraded()))
            return counts, watching

    counts, watching = asyncio.run(two_losses())
    assert counts == [1, 2]  # one per episode, none while healthy; the second loss pages anew
    assert len(watching.published) == 2
    first, second = (e for _, e in watching.degraded())
    assert first.data["replica"] == second.data["replica"] == replica.name
    assert first.incident_key != second.incident_key


def test_a_replica_back_for_a_pass_now_and_then_stays_one_episode_paged_once(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    primary, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]

    async def flapping() -> Watching:
        async with Watching(cluster) as watching:
            kill(replica)
            await watching.run(DEGRADED.degraded_after + 1.0)  # reported
            for _ in range(2):
                await asyncio.to_thread(replica.restart, replica_of=primary)
                await asyncio.to_thread(wait_for_replicas_in_sync, primary, [replica])
                await watching.run(0.01)  # back for one pass of every node
                kill(replica)
                await watching.run(DEGRADED.degraded_after + 0.5)
            return watching

    assert len(asyncio.run(flapping()).degraded()) == 1


def test_a_report_another_node_ended_starts_this_nodes_clock_again(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # The node that saw the replica back withdrew the claim; this one missed the return and
    # must not page at once on a clock of the episode that ended.
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    dead = cluster.shards[0].replicas[0]

    async def watch() -> tuple[float, Watching]:
        async with Watching(cluster) as watching:
            kill(dead)
            await watching.run(DEGRADED.degraded_after + 1.0)  # reported
            [(_, report)] = watching.degraded()
            await watching.store.watch.withdraw_report(report.incident_key.rpartition("@")[0])
            ended_at = time.monotonic()
            await watching.run(DEGRADED.degraded_after + 1.0)
            return ended_at, watching

    ended_at, watching = asyncio.run(watch())
    [_, (filed_at, _)] = watching.degraded()
    assert filed_at - ended_at >= DEGRADED.degraded_after


def test_a_shard_its_lost_replica_leaves_unwritable_is_paged_unwritable_not_degraded(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # One listed replica, one needed: its loss stops the writes; a degraded page would say the
    # shard "still writes" and page twice for one fault.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)

    async def watch() -> Watching:
        async with Watching(cluster) as watching:
            kill(cluster.shards[0].replicas[0])
            await watching.run(DEGRADED.degraded_after + 1.0)
            return watching

    published = asyncio.run(watch()).published
    assert [e.type for _, e in published] == ["ShardUnwritable"]


def test_a_healthy_shard_is_not_reported_degraded(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=2, replicas=2)

    async def watch() -> Watching:
        async with Watching(cluster) as watching:
            await watching.run(DEGRADED.degraded_after + 1.0)
            return watching

    assert asyncio.run(watch()).published == []


def test_a_degraded_shard_whose_lock_a_failover_holds_is_reported_only_after_it_is_released(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster_on_suite_control(shards=1, replicas=2)
    dead = cluster.shards[0].replicas[0]

    async def watch() -> tuple[int, Watching]:
        async with Watching(cluster) as watching:
            # A failover workflow holds the shard's lock: it is changing the replicas.
            lock = await watching.store.locks.acquire("shard", "ratequeue/s0", "workflow-1")
            kill(dead)
            await watching.run(DEGRADED.degraded_after + 1.0)
            while_held = len(watching.degraded())
            await watching.store.locks.release(lock)
            await watching.run(0.5)  # still short of the replica: reported now
            return while_held, watching

    while_held, watching = asyncio.run(watch())
    assert while_held == 0
    [(_, report)] = watching.degraded()
    assert report.data["replica"] == dead.name


def test_replicas_the_primarys_info_cannot_tell_apart_are_asked_themselves(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # As on compose: every node listens on one port, and the primary names its replicas by
    # addresses the map does not list. One listed replica follows, the other is gone.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    live = cluster.shards[0].replicas[0].ref()
    gone = NodeRef(name="s0-replica-gone", host="127.0.0.9", port=live.port)
    shard = cluster.initial_topology().shards[0].model_copy(update={"replicas": [live, gone]})
    seen = Writability(True, None, appointed=True, followers=(("172.18.0.5", live.port),))
    missing = asyncio.run(missing_replicas(shard, seen, timeout=0.5))
    assert missing == [gone]
