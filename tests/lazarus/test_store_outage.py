"""A controller whose coordination store is unreachable when a shard primary dies, on both
backends (the control Redis killed; etcd without its quorum), on real redis-server and etcd
processes: it takes no lock and acts on nothing, pages a person through PagerDuty and Slack
(which do not need the store) saying why, and the escalation reaches the audit trail: at once
on etcd (the record log is in Redis, which answers), once the control Redis is back on Redis.
And on etcd with the Redis of the stream and the record log killed instead: the controller's own
report of the dead primary, refused by the stream, is decided by the node that filed it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chaos.faults.base import InjectedFault, NodeTarget
from common.etcd_processes import EtcdCluster
from detection.events import Event, new_event
from detection.sensor import incident_key
from detection.streams import EventStream
from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.controller import ControllerNode
from lazarus_lite.coordination.etcd_backend import EtcdCoordinationStore
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import open_coordination_store
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from lazarus_lite.decisions import Decisions
from lazarus_lite.held_records import HeldRecordLog
from lazarus_lite.incidents import IncidentClaims
from lazarus_lite.service import open_stream
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.shard_watch import ReportDecider, ShardWatch, WatchSettings
from notifications.config import NotificationConfig
from ratequeue.local_cluster import LocalCluster
from tests.chaos.test_local_faults import (
    Recorder,
    faults,  # noqa: F401 (the fixture)
    needs_iptables,
)
from tests.etcd_topology import store_address_of, topology_moved_to_etcd
from tests.lazarus.recorders import HttpRecorder, serving_http_recorder

QUICK = WatchSettings(interval=0.05, sensor_silence_after=0.2, self_report_after=0.3,
                      unwritable_after=60.0)  # fmt: skip
INCIDENT = incident_key("ratequeue", "s0", "s0-primary", 1)
T = TypeVar("T")


class NoStream:
    """The event stream, unreachable like the store (nothing may be filed through it): its
    connection refused, as a dead Redis's is."""

    async def publish(self, event: Any) -> str:
        raise ConnectionRefusedError(111, "the stream is unreachable")


class SilentStream:
    """The event stream, paused: a publish waits (it may reach the stream when it resumes)."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def publish(self, event: Any) -> str:
        self.asked.append(event)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def notifications(http: HttpRecorder) -> NotificationConfig:
    return NotificationConfig.parse({
        "retry": {"attempts": 1, "backoff_seconds": 0.01, "timeout_seconds": 2},
        "teams": {"oncall": {
            "slack": {"webhook_url": f"{http.url}/slack/T000/B000/secret"},
            "pagerduty": {"routing_key": "R" * 32, "url": f"{http.url}/v2/enqueue"},
            "channels": ["pagerduty", "slack"],
        }},
        "services": {"ratequeue": {"team": "oncall"}},
    })  # fmt: skip


@dataclass
class Controller:
    """The parts of a controller node that act without the store (its watch and decisions),
    on the event loop its connections belong to."""

    loop: asyncio.AbstractEventLoop
    watch: ShardWatch
    decisions: Decisions

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    async def watch_for(self, seconds: float) -> None:
        """Pass after pass for `seconds`; a pass that cannot read the store raises, as the
        node's own loop expects."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # The store is away: the loop goes on (as `watch_forever` does).
            with contextlib.suppress(Exception):
                await self.watch.run_once()
            await asyncio.sleep(QUICK.interval)

    async def escalations(self) -> list[AuditRecord]:
        return [r for r in await self.decisions.audit.list() if r.outcome == "escalated"]


async def decisions_made(watch: ShardWatch) -> None:
    """Wait for the reports the node is deciding itself."""
    await asyncio.gather(*watch.deciding, return_exceptions=True)


@contextmanager
def controller(
    store: CoordinationStore,
    http: HttpRecorder,
    decide: ReportDecider | None = None,
    stream: Any = None,
) -> Iterator[Controller]:
    """A controller node's watch and decisions on `store`, once it has read the topology; the
    reports the stream refuses go to `decide` when given (as a node decides them itself)."""
    loop = asyncio.new_event_loop()
    records = HeldRecordLog(store.records, "n1")
    audit = AuditLog(records)
    claims = IncidentClaims(store.incidents, audit, ttl=600, retry_after=30)
    decisions = Decisions("n1", records, audit, claims, notifications(http))
    keeper = ShardKeeper(store, "n1", "demote")
    watch = ShardWatch(store, stream or NoStream(), keeper, "n1", QUICK,
                       on_store_away=decisions.escalate_without_store,
                       decide_unpublished=decide)  # fmt: skip
    node = Controller(loop, watch, decisions)
    try:
        node.run(watch.run_once())
        yield node
    finally:
        node.run(decisions_made(watch))
        node.run(decisions.aclose())
        node.run(store.aclose())
        loop.close()


@pytest.fixture
def http() -> Iterator[HttpRecorder]:
    with serving_http_recorder() as recorder:
        yield recorder


def escalation_pages(http: HttpRecorder) -> list[dict[str, Any]]:
    return [e for e in http.pagerduty_events()
            if e["event_action"] == "trigger" and e.get("dedup_key") == INCIDENT]  # fmt: skip


def kill_primary(cluster: LocalCluster) -> None:
    cluster.shards[0].primary.process.send_signal(signal.SIGKILL)
    cluster.shards[0].primary.process.wait(5)


# -- the control store in Redis ---------------------------------------------------------------


@pytest.fixture
def redis_outage(
    start_cluster: Callable[..., LocalCluster], http: HttpRecorder
) -> Iterator[tuple[LocalCluster, Controller]]:
    """The control Redis killed, then s0's primary; the controller watched for a while."""
    cluster = start_cluster(shards=1, replicas=1)
    store = RedisCoordinationStore.from_url(cluster.control.url, timeout=1.0)
    with controller(store, http) as node:
        cluster.control.stop()
        kill_primary(cluster)
        node.run(node.watch_for(1.5))
        yield cluster, node


def test_a_primary_down_while_the_control_redis_is_away_pages_a_person_once_saying_why(
    redis_outage: tuple[LocalCluster, Controller], http: HttpRecorder
) -> None:
    [page] = escalation_pages(http)
    reason = page["payload"]["custom_details"]["escalation_reason"]
    assert "s0-primary unreachable" in reason
    assert "coordination store is unreachable" in reason and "nothing is promoted" in reason
    assert any(INCIDENT in str(message) for message in http.received("/slack/"))


def test_the_escalation_is_held_until_the_control_redis_is_back_then_recorded(
    redis_outage: tuple[LocalCluster, Controller],
) -> None:
    cluster, node = redis_outage
    assert len(node.decisions.records.held_events) == 1
    cluster.control.restart()

    assert node.run(node.decisions.write_held()) == 2  # the record, its escalations entry
    [record] = node.run(node.escalations())
    assert record.event["shard"] == "s0" and record.workflow_id is None
    assert "coordination store is unreachable" in record.reason
    assert [n.kind for n in record.notes if n.kind == "store_unreachable"] == ["store_unreachable"]
    assert len(node.decisions.records) == 0


@pytest.fixture
def redis_cutoff(
    start_cluster: Callable[..., LocalCluster],
    http: HttpRecorder,
    faults: Recorder,  # noqa: F811
) -> Iterator[tuple[InjectedFault, Controller]]:
    """The control Redis cut off (it runs on; nothing reaches it, no call is refused: each
    waits for its timeout), then s0's primary killed; the controller watched for a while."""
    cluster = start_cluster(shards=1, replicas=1)
    # The controllers' socket timeout: longer than a watch pass may wait for the store.
    store = RedisCoordinationStore.from_url(cluster.control.url, timeout=5.0)
    control = cluster.control
    target = NodeTarget(name=control.name, role="control", port=control.port, pid=control.pid)
    with controller(store, http) as node:
        fault = faults.inject("blackhole", target, whole_node=True)
        kill_primary(cluster)
        node.run(node.watch_for(6.0))
        yield fault, node
        fault.rollback()


@needs_iptables
def test_a_primary_down_while_the_control_redis_is_cut_off_pages_a_person_once_saying_why(
    redis_cutoff: tuple[InjectedFault, Controller], http: HttpRecorder
) -> None:
    [page] = escalation_pages(http)
    reason = page["payload"]["custom_details"]["escalation_reason"]
    assert "s0-primary unreachable" in reason and "nothing is promoted" in reason


@needs_iptables
def test_the_escalation_made_while_the_control_redis_was_cut_off_is_recorded_once_after(
    redis_cutoff: tuple[InjectedFault, Controller],
) -> None:
    fault, node = redis_cutoff
    assert len(node.decisions.records.held_events) == 1
    fault.rollback()

    assert node.run(node.decisions.write_held()) == 2  # the record, its escalations entry
    [record] = node.run(node.escalations())
    assert "coordination store is unreachable" in record.reason
    assert len(node.decisions.records) == 0


# -- the coordination store on etcd -----------------------------------------------------------


@pytest.fixture
def etcd_outage(
    start_cluster: Callable[..., LocalCluster], etcd: EtcdCluster, http: HttpRecorder
) -> Iterator[Controller]:
    """The topology in etcd, etcd without its quorum, then s0's primary killed."""
    cluster = start_cluster(shards=1, replicas=1)
    topology_moved_to_etcd(cluster, etcd)
    store = EtcdCoordinationStore.open(etcd.endpoints, cluster.control.url, timeout=1.0)
    with controller(store, http) as node:
        for member in etcd.members[:2]:
            member.kill()
        kill_primary(cluster)
        node.run(node.watch_for(4.0))
        yield node


def test_a_primary_down_while_etcd_has_no_quorum_pages_a_person_once_saying_why(
    etcd_outage: Controller, http: HttpRecorder
) -> None:
    [page] = escalation_pages(http)
    reason = page["payload"]["custom_details"]["escalation_reason"]
    assert "s0-primary unreachable" in reason and "coordination store is unreachable" in reason


def test_without_etcd_the_escalation_is_recorded_at_once_in_the_redis_record_log(
    etcd_outage: Controller,
) -> None:
    assert len(etcd_outage.decisions.records) == 0
    [record] = etcd_outage.run(etcd_outage.escalations())
    assert record.event["shard"] == "s0" and record.workflow_id is None


# -- etcd answers; the Redis of the event stream and the record log does not --------------------


def one_shard_on_etcd(
    start_cluster: Callable[..., LocalCluster], etcd: EtcdCluster
) -> tuple[LocalCluster, EtcdCoordinationStore]:
    """A one-shard cluster whose topology is in etcd, and the store on it (the record log in the
    cluster's control Redis, which also carries the stream)."""
    cluster = start_cluster(shards=1, replicas=1)
    topology_moved_to_etcd(cluster, etcd)
    return cluster, EtcdCoordinationStore.open(etcd.endpoints, cluster.control.url, timeout=1.0)


def test_a_report_the_paused_stream_may_still_take_is_not_decided_here(
    start_cluster: Callable[..., LocalCluster], etcd: EtcdCluster, http: HttpRecorder
) -> None:
    # A publish that timed out may reach the stream when it resumes, and be decided there too.
    cluster, store = one_shard_on_etcd(start_cluster, etcd)
    decided: list[Any] = []

    async def decide(event: Any) -> None:
        decided.append(event)

    stream = SilentStream()
    with controller(store, http, decide, stream) as node:
        node.watch.settings = replace(QUICK, publish_timeout=0.1)
        kill_primary(cluster)
        node.run(node.watch_for(1.5))
        downs = [e for e in stream.asked if e.type == "RedisMasterDown"]
        filers = [node.run(store.watch.report_filer(f"self:{e.dedup_key}")) for e in downs]

    assert downs and decided == []
    assert filers == [None] * len(downs)  # withdrawn: a later pass files it again


@pytest.fixture
def stream_redis_outage(
    start_cluster: Callable[..., LocalCluster], etcd: EtcdCluster, http: HttpRecorder
) -> Iterator[tuple[Controller, list[Any]]]:
    """The topology in etcd, the control Redis (stream, record log) killed, then s0's primary;
    what the node decides itself is collected (a decider that fails once first)."""
    cluster, store = one_shard_on_etcd(start_cluster, etcd)
    decided: list[Any] = []

    async def decide(event: Any) -> None:
        decided.append(event)
        if len(decided) == 1:
            raise ConnectionError("the first decision failed (say, a quorum round)")

    with controller(store, http, decide) as node:
        cluster.control.stop()
        kill_primary(cluster)
        node.run(node.watch_for(2.0))
        yield node, decided


def test_without_the_stream_the_node_decides_its_own_report_of_the_dead_primary(
    stream_redis_outage: tuple[Controller, list[Any]], http: HttpRecorder
) -> None:
    _, decided = stream_redis_outage
    downs = [e for e in decided if e.type == "RedisMasterDown"]
    assert downs and all(e.source == "lazarus:n1" and e.shard == "s0" for e in downs)
    assert downs[0].data["primary"] == "s0-primary"
    assert escalation_pages(http) == []  # etcd answers: decided, not handed to a person


def test_a_report_whose_own_decision_failed_is_filed_again_and_decided_once_more(
    stream_redis_outage: tuple[Controller, list[Any]],
) -> None:
    _, decided = stream_redis_outage
    downs = [e for e in decided if e.type == "RedisMasterDown"]
    # The first decision failed: its report was withdrawn, filed again on a later pass and
    # decided again; the second stood, so no third (its claim holds for `reemit_every`).
    assert len(downs) == 2 and downs[0].id != downs[1].id


# -- the control Redis restarted empty ------------------------------------------------------


def unmatched_event(incident: str) -> Event:
    """An event no rule matches: any node decides it (escalates it), with or without a map."""
    return new_event("HealthcheckDown", environment="dev", region="local", service="ratequeue",
                     shard="s0", host="127.0.0.1:1", source="sensor-test",
                     incident_key=incident)  # fmt: skip


async def publish_as_a_sensor(stream: EventStream, event: Event) -> None:
    """Publish until the stream takes it, as a sensor's buffer does: its connection from
    before the restart is refused once (the stream makes one attempt)."""
    for _ in range(20):
        with contextlib.suppress(RedisConnectionError):
            await stream.publish(event)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the stream never took event {event.id}")


async def decided(node: ControllerNode, event: Event, timeout: float) -> AuditRecord:
    """The event's audit record once it holds a decision (waiting up to `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the record log may be restarting
            record = await node.audit.get(event.id)
            if record is not None and record.outcome != "received":
                return record
        assert time.monotonic() < deadline, f"event {event.id} was not decided in {timeout} s"
        await asyncio.sleep(0.1)


def test_a_running_controller_decides_the_events_published_after_the_control_redis_restarted_empty(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # On Redis the whole store comes back empty; on etcd the Redis of the stream and the record
    # log does. Either way the stream's consumer group is gone with it.
    cluster = start_cluster_on_suite_control(shards=1, replicas=1)
    address = store_address_of(cluster)
    settings = ControllerSettings(node_id="n1", api_token="a-token-of-sixteen-chars",
                                  **address.model_dump())  # fmt: skip

    async def restart_empty_while_running() -> tuple[AuditRecord, float | None]:
        store = open_coordination_store(address)
        node = ControllerNode(settings, store=store, stream=open_stream(settings))
        sensor = open_stream(settings)
        await node.start()
        try:
            before = unmatched_event("before-the-restart")
            await sensor.publish(before)
            await decided(node, before, 10)
            cluster.control.restart(empty=True)
            after = unmatched_event("after-the-restart")
            await publish_as_a_sensor(sensor, after)
            record = await decided(node, after, 10)
            recreated = node.metrics.registry.get_sample_value(
                "lazarus_stream_groups_recreated_total"
            )
            return record, recreated
        finally:
            await node.stop()
            await store.aclose()
            await sensor.close()
            await node.stream.close()

    record, recreated = asyncio.run(restart_empty_while_running())
    assert record.outcome == "escalated"
    assert recreated == 1
