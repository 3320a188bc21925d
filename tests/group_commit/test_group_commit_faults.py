"""Compound faults against the API's group commit (`ratequeue.coalescing`): real redis-server
shards with replicas, the real API served by uvicorn, the failover done by the workflow's own
steps, and a ledger of every 201 checked against what the shard holds once it settles.

The guarantees each schedule holds the group commit to:
- a 201 only for a message that `WAIT` confirmed on the primary of the current epoch: a batch
  whose primary dies, stalls or is failed away from in its `WAIT` is answered 503 (or, retried
  inside the API, 201 from the new primary), never 201 from the old one;
- after the shard settles, its primary holds every acknowledged id exactly once (no loss, no
  second copy), whichever batches, retries and API instances carried it;
- every request is answered within its deadline: none is left hanging by a failover, a
  stalled primary, a client that went away, or a full backlog.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.iptables import iptables_unavailable_reason
from common.redis_processes import RedisProcess, start_redis
from ratequeue.coalescing import MAX_IN_FLIGHT, MAX_PENDING
from ratequeue.config import ServiceSettings
from ratequeue.local_cluster import LocalCluster, ShardNode
from ratequeue.scripts import COUNT_KEY
from ratequeue.topology import TOPOLOGY_KEY
from tests.conftest import ServedApi
from tests.group_commit.support import (
    Flood,
    Producer,
    assert_each_acknowledged_message_held_once,
    blocked_clients,
    current_topology,
    drain,
    enqueues_answered,
    fail_over,
    fail_over_recorded,
    held_ids,
    messages,
    node_of,
    rejoin,
    wait_for,
)

HELD = 40  # messages of one wave: several batches of the group commit


@dataclass
class Rig:
    """What a schedule is built of, all stopped or undone at teardown: one-shard clusters,
    API instances on them, producers, and cuts of a node's replication links."""

    start_cluster: Callable[..., LocalCluster]
    serve_api: Callable[..., ServedApi]
    cuts: list[InjectedFault] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)

    def cluster(self, replicas: int) -> LocalCluster:
        return self.start_cluster(shards=1, replicas=replicas)

    def api(self, cluster: LocalCluster, **settings: object) -> ServedApi:
        return self.serve_api(cluster, **settings)

    def producer(self, api: ServedApi, **options: float) -> Producer:
        self.producers.append(Producer(api.url, **options))
        return self.producers[-1]

    def cut(self, node: ShardNode) -> InjectedFault:
        """Cut the node's replication links (its peer address, both ways; clients still reach
        it): its writes stay on it alone and `WAIT` on it waits."""
        if iptables_unavailable_reason() is not None:
            pytest.skip(f"needs iptables: {iptables_unavailable_reason()}")
        target = NodeTarget(name=node.name, role=node.role, shard=node.shard, host=node.host,
                            port=node.port, peer_host=node.peer_host, pid=node.pid)  # fmt: skip
        self.cuts.append(LocalFaultBackend().inject("blackhole", target))
        return self.cuts[-1]

    def hold_in_wait(self, node: ShardNode, wave: list[tuple[str, str]], *producers: Producer,
                     retry: bool = True) -> None:  # fmt: skip
        """Cut the node's replication, then send `wave` through each producer (each of its own
        API instance); return once every batch the instances may have on their way (their
        lane's MAX_IN_FLIGHT) waits in its `WAIT` on the node. The rest waits in the lanes."""
        self.cut(node)
        for producer in producers:
            producer.send(wave, retry=retry)
        batches = len(producers) * MAX_IN_FLIGHT
        wait_for(f"{batches} batches in their WAIT on {node.name}",
                 lambda: blocked_clients(node) == batches)  # fmt: skip

    def close(self) -> None:
        for fault in reversed(self.cuts):
            with contextlib.suppress(Exception):
                fault.rollback()
        for producer in self.producers:
            producer.close()


@pytest.fixture
def rig(
    start_cluster: Callable[..., LocalCluster], serve_api: Callable[..., ServedApi]
) -> Iterator[Rig]:
    made = Rig(start_cluster, serve_api)
    yield made
    made.close()


def assert_ledger(cluster: LocalCluster, acknowledged: Iterable[str]) -> Counter[str]:
    """Every acknowledged id held once by the settled shard, and leased once from it."""
    held = assert_each_acknowledged_message_held_once(cluster, acknowledged)
    assert set(drain(cluster).values()) == {1}
    return held


def kill(node: ShardNode) -> None:
    node.signal(signal.SIGKILL)
    assert node.process is not None
    node.process.wait(timeout=10)


def holds(node: ShardNode, count: int) -> bool:
    with node.client() as conn:
        return int(conn.get(COUNT_KEY) or 0) >= count


def primary_of(cluster: LocalCluster) -> ShardNode:
    return cluster.shards[0].primary


# -- the primary fails in a batch's WAIT ---------------------------------------------------------


def test_a_batch_whose_wait_fell_short_is_acknowledged_only_after_the_failover_and_held_once(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=2)
    api = rig.api(cluster, wait_timeout_ms=300, retry_deadline=1)
    producer = rig.producer(api)
    primary = primary_of(cluster)
    rig.cut(primary)
    producer.send(messages("short", HELD))
    # Every message answered while the primary is cut off: 503, as WAIT confirms no replica
    # (or, once the replicas' acknowledgements are older than the write quorum allows, the
    # primary refuses the write).
    wave = [i for _, i in messages("short", HELD)]
    wait_for("an answer for every message", lambda: all(producer.statuses(i) for i in wave))
    assert holds(primary, 1), "no batch was written on the primary alone"
    killed_at = time.time()
    kill(primary)
    fail_over(cluster)
    producer.wait(timeout=40)

    acknowledged = producer.acknowledged()
    assert sorted(acknowledged) == sorted(wave)
    assert min(acknowledged.values()) > killed_at, "a 201 from the primary WAIT fell short on"
    assert_ledger(cluster, acknowledged)


def test_a_batch_in_its_wait_when_its_primary_is_killed_is_acknowledged_once_by_the_new_one(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=2)
    # WAIT outlasts the schedule: the batches are still in it when the primary dies.
    api = rig.api(cluster, wait_timeout_ms=8000, retry_deadline=10)
    producer = rig.producer(api)
    primary = primary_of(cluster)
    producer.acknowledge(messages("before", 10))
    rig.hold_in_wait(primary, messages("in-wait", HELD), producer)
    assert holds(primary, 10 + MAX_IN_FLIGHT)
    assert not any(a.id.startswith("in-wait") for a in producer.answers)
    killed_at = time.time()
    kill(primary)
    fail_over(cluster)
    producer.wait(timeout=40)

    acknowledged = producer.acknowledged()
    in_wait = {i: at for i, at in acknowledged.items() if i.startswith("in-wait")}
    assert len(in_wait) == HELD
    assert min(in_wait.values()) > killed_at
    assert_ledger(cluster, acknowledged)


# -- a second failure: the new primary stalls in a batch's WAIT ----------------------------------


def test_a_new_primary_paused_in_its_batches_wait_and_failed_away_from_acknowledges_nothing(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=3)
    api = rig.api(cluster, wait_timeout_ms=5000, retry_deadline=12)
    producer = rig.producer(api)
    producer.acknowledge(messages("first", 10))
    kill(primary_of(cluster))
    second = node_of(cluster, fail_over(cluster).primary.name)
    producer.acknowledge(messages("second", 10))
    held = messages("in-wait", HELD)
    rig.hold_in_wait(second, held, producer)
    second.signal(signal.SIGSTOP)
    in_wait_ids = [i for _, i in held]
    try:
        # The stalled primary unreachable: its replicas are fenced.
        third, record = fail_over_recorded(cluster)
        # Before the new epoch's compare-and-set: no 201 from its primary can precede it.
        published_at = record.steps["publish_topology"].started_at
        assert published_at is not None
        # Resumed only once every held message is acknowledged: each 201 then came while the
        # second primary was stopped, so from the primary of the epoch published meanwhile.
        wait_for(f"the held messages acknowledged while {second.name} is stopped",
                 lambda: set(in_wait_ids) <= set(producer.acknowledged()))  # fmt: skip
    finally:
        second.signal(signal.SIGCONT)
    producer.wait(timeout=40)

    acknowledged = producer.acknowledged()
    assert len(acknowledged) == 20 + HELD
    in_wait = [acknowledged[i] for i in in_wait_ids]
    assert min(in_wait) >= published_at, f"a 201 from {second.name} before it was failed away from"
    assert third.primary.name not in (second.name, cluster.shards[0].primary.name)
    assert_ledger(cluster, acknowledged)


# -- a client that goes away mid-batch -----------------------------------------------------------


def test_requests_whose_clients_left_mid_batch_are_finished_and_a_retry_is_acknowledged_once(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=2)
    api = rig.api(cluster, wait_timeout_ms=5000, retry_deadline=10)
    impatient, patient = rig.producer(api, timeout=0.5), rig.producer(api)
    primary = primary_of(cluster)
    wave = messages("left", HELD)
    # Each client leaves (disconnects) after half a second.
    rig.hold_in_wait(primary, wave, impatient, retry=False)
    impatient.wait(timeout=10)
    assert {a.status for a in impatient.answers} == {None}, "every client left unanswered"
    kill(primary)
    fail_over(cluster)
    patient.send(wave)  # the producers try again, with the same ids
    patient.wait(timeout=40)

    assert sorted(patient.acknowledged()) == sorted(i for _, i in wave)
    # Each request the clients left was still handled to its end: none hangs in the lane.
    wait_for("every request handled", lambda: enqueues_answered(api.url) == 2 * HELD)
    assert_ledger(cluster, patient.acknowledged())


# -- two API instances coalescing the same messages ----------------------------------------------


def test_two_api_instances_batching_the_same_ids_through_a_failover_queue_each_once(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=2)
    apis = [rig.api(cluster, wait_timeout_ms=8000, retry_deadline=10) for _ in range(2)]
    # A producer that sends each message to both instances (a retry through the balancer).
    both = [rig.producer(api) for api in apis]
    primary = primary_of(cluster)
    wave = messages("twice", HELD)
    rig.hold_in_wait(primary, wave, *both)
    kill(primary)
    fail_over(cluster)
    for producer in both:
        producer.wait(timeout=40)

    for producer in both:
        assert sorted(producer.acknowledged()) == sorted(i for _, i in wave)
    assert_ledger(cluster, [i for _, i in wave])


# -- a stale API instance: its topology still names the old primary ------------------------------


@pytest.fixture
def serve_stale_api(tmp_path: Path) -> Iterator[Callable[..., ServedApi]]:
    """An API instance whose control store is a frozen copy of the cluster's as it is now: it
    keeps the topology of this epoch whatever is published later (an instance cut off from the
    control store keeps its cached topology the same way)."""
    started: list[tuple[RedisProcess, ServedApi]] = []

    def serve(cluster: LocalCluster, **settings: object) -> ServedApi:
        frozen = start_redis("frozen-control", "control", None, tmp_path / "frozen")
        with frozen.client() as copy:
            copy.set(TOPOLOGY_KEY, current_topology(cluster).model_dump_json())
        options: dict[str, object] = {"refresh_interval": 0.5, **settings}
        api = ServedApi(ServiceSettings(control_url=frozen.url, **options))  # type: ignore[arg-type]
        started.append((frozen, api.__enter__()))
        return api

    yield serve
    for frozen, api in started:
        api.__exit__(None, None, None)
        frozen.stop()


@pytest.mark.parametrize("old_primary", ["stalled_in_its_wait", "fenced"])
def test_a_stale_api_instance_gets_503_never_201_from_the_primary_failed_away_from(
    rig: Rig,
    serve_stale_api: Callable[..., ServedApi],
    old_primary: str,
) -> None:
    cluster = rig.cluster(replicas=2)
    current = rig.producer(rig.api(cluster, wait_timeout_ms=300, retry_deadline=2))
    stale_api = serve_stale_api(cluster, wait_timeout_ms=3000, retry_deadline=2)
    stale = rig.producer(stale_api, give_up_after=6)
    primary = primary_of(cluster)
    stale.acknowledge(messages("early", 10))
    if old_primary == "stalled_in_its_wait":
        # The stale instance's batches are in their WAIT when the primary stalls and the shard
        # fails over without reaching it: it keeps its fence epoch, and its replicas are gone.
        rig.hold_in_wait(primary, messages("stale", HELD), stale)
        primary.signal(signal.SIGSTOP)
        try:
            fail_over(cluster)
        finally:
            primary.signal(signal.SIGCONT)
    else:
        # The old primary answered the failover: it is parked and its fence dropped. The stale
        # instance writes to it only afterwards.
        fail_over(cluster)
        stale.send(messages("stale", HELD))
    failed_over_at = time.time()
    current.send(messages("current", HELD))
    current.wait(timeout=40)
    stale.wait(timeout=40)

    stale_answers = [a for a in stale.answers if a.id.startswith("stale")]
    assert [a for a in stale_answers if a.status == 201] == []
    assert {a.status for a in stale_answers} == {503}
    assert stale_answers[-1].at > failed_over_at + 3  # refused for as long as it was asked
    acknowledged = {**stale.acknowledged(), **current.acknowledged()}
    assert len(acknowledged) == 10 + HELD
    assert_ledger(cluster, acknowledged)


# -- a full backlog at the moment of the failover ------------------------------------------------


def test_with_the_backlog_full_when_the_shard_fails_over_every_request_is_answered(
    rig: Rig,
) -> None:
    cluster = rig.cluster(replicas=2)
    api = rig.api(cluster, wait_timeout_ms=20_000, retry_deadline=30)
    primary = primary_of(cluster)
    first = rig.producer(api, timeout=60)
    rig.hold_in_wait(primary, messages("in-flight", HELD), first, retry=False)
    excess = 100
    flood = Flood(api.url, messages("flood", MAX_PENDING + excess)).start()
    # Refused at once: the lane holds MAX_PENDING (and a few of the first wave wait in it too).
    wait_for("the backlog full", lambda: len(flood.with_code("enqueue_backlog_full")) >= excess,
             timeout=60)  # fmt: skip
    kill(primary)
    fail_over(cluster)
    first.wait(timeout=60)
    flood.wait(timeout=60)

    # The batches in their WAIT may run out of their retry deadline (503); what waited in the
    # lane goes out to the new primary: 201, unless refused for the full backlog.
    assert {a.status for a in first.answers} <= {201, 503}, "a request without an answer"
    refused = flood.with_code("enqueue_backlog_full")
    flood_acknowledged = {i for i, a in flood.answers.items() if a.status == 201}
    assert flood_acknowledged == set(flood.answers) - refused
    acknowledged = flood_acknowledged | set(first.acknowledged())
    held = assert_ledger(cluster, acknowledged)
    assert refused & set(held) == set(), "a request refused for the backlog was written"


def test_a_stale_api_instance_is_refused_by_the_fence_of_its_old_primary_appointed_again(
    rig: Rig,
    serve_stale_api: Callable[..., ServedApi],
) -> None:
    # The shard fails over and back: the node the stale instance names is the primary again,
    # with a replica, so only the fence (its epoch, not the instance's) refuses the batches.
    cluster = rig.cluster(replicas=1)
    stale = rig.producer(serve_stale_api(cluster, wait_timeout_ms=300, retry_deadline=1),
                      give_up_after=3)  # fmt: skip
    current = rig.producer(rig.api(cluster, wait_timeout_ms=300, retry_deadline=2))
    old = primary_of(cluster)
    first = fail_over(cluster)
    rejoin(cluster, old.name)
    back = fail_over(cluster)
    rejoin(cluster, first.primary.name)
    assert back.primary.name == old.name and back.epoch > 1
    stale.send(messages("stale", HELD))
    current.send(messages("current", HELD))
    stale.wait(timeout=30)
    current.wait(timeout=30)

    assert {(a.status, a.code) for a in stale.answers} == {(503, "stale_topology")}
    assert len(current.acknowledged()) == HELD
    held = assert_ledger(cluster, current.acknowledged())
    assert not any(i.startswith("stale") for i in held), "the fence let a stale batch write"


# -- WAIT confirms fewer replicas than the write quorum ------------------------------------------


def test_a_batch_confirmed_by_fewer_replicas_than_required_is_never_acknowledged(
    rig: Rig,
) -> None:
    # k = 2 of 2 replicas: WAIT counts one of them for the wave. A failover reads N - k + 1 = 1
    # replica, and may promote the other, which never got the wave: acknowledged, it would be
    # lost.
    cluster = rig.start_cluster(shards=1, replicas=2, min_replicas=2)
    api = rig.api(cluster, min_replicas=2, wait_timeout_ms=300, retry_deadline=1)
    producer = rig.producer(api, give_up_after=4)
    primary, confirming, lagging = primary_of(cluster), *cluster.shards[0].replicas
    producer.acknowledge(messages("both", 10))
    lagging.signal(signal.SIGSTOP)
    try:
        wave = [i for _, i in messages("partial", HELD)]
        producer.send(messages("partial", HELD))
        wait_for("an answer for every message", lambda: all(producer.statuses(i) for i in wave))
        assert set(wave) & set(held_ids(confirming)), "WAIT counted no replica for the wave"
        kill(primary)
        confirming.signal(signal.SIGSTOP)
    finally:
        lagging.signal(signal.SIGCONT)
    try:
        promoted = fail_over(cluster, min_replicas=2)
    finally:
        confirming.signal(signal.SIGCONT)
    producer.wait(timeout=30)

    assert promoted.primary.name == lagging.name
    assert [i for i in producer.acknowledged() if i.startswith("partial")] == []
    assert_ledger(cluster, producer.acknowledged())
