"""The failover rule's checks, run the way one controller node runs them, against real
redis-server processes whose primary was killed: what they conclude, and what it costs the
replicas (each is read once per evaluation, its offset and enqueue count in one round trip)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from detection.events import Event, new_event
from lazarus_lite.checks import CHECKS, CheckResult, run_checks
from lazarus_lite.rules import CheckSpec, load_rules
from ratequeue import membership
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import Topology
from tests.e2e.support import wait_for
from tests.etcd_topology import map_in_store_of

RULES = Path(__file__).resolve().parents[2] / "lazarus_lite" / "definitions" / "rules"


def primary_down_event(topology: Topology) -> Event:
    """A replica's report that s0's primary is down, as a sensor sends it."""
    shard = topology.shard("s0")
    return new_event("RedisMasterDown", environment="dev", region="local", service="ratequeue",
                     shard="s0", host=shard.replicas[0].address, source="test",
                     data={"master_link_status": "down", "primary": shard.primary.name,
                           "shard_epoch": shard.epoch})  # fmt: skip


def failover_rule_checks(cluster: LocalCluster) -> list[CheckResult]:
    topology = map_in_store_of(cluster)
    rule = load_rules([RULES / "ratequeue.yaml"], known_checks=CHECKS,
                      known_actions=["ratequeue.failover", "default.record"]).rules[0]  # fmt: skip
    event = primary_down_event(topology)
    return asyncio.run(run_checks(event, topology, rule.checks, min_replicas=1))


def master_down_during_a_stall(cluster: LocalCluster, seconds: float) -> CheckResult:
    """MasterDown as one controller evaluates it, on s0's primary SIGSTOPped as the check starts
    and resumed `seconds` later."""
    topology = map_in_store_of(cluster)
    primary = cluster.shard("s0").primary

    async def check() -> CheckResult:
        resumed = asyncio.Event()

        def resume() -> None:
            primary.signal(signal.SIGCONT)
            resumed.set()

        primary.signal(signal.SIGSTOP)
        asyncio.get_running_loop().call_later(seconds, resume)
        spec = CheckSpec(checkName="MasterDown")
        (result,) = await run_checks(primary_down_event(topology), topology, [spec])
        await resumed.wait()
        return result

    try:
        return asyncio.run(check())
    finally:
        primary.signal(signal.SIGCONT)


@pytest.fixture
def killed_primary(start_cluster_on_suite_control: Callable[..., LocalCluster]) -> LocalCluster:
    """Shard s0 (of two, two replicas each) with 5 enqueue-kind writes replicated, then its
    primary SIGKILLed."""
    cluster = start_cluster_on_suite_control(shards=2, replicas=2)
    s0 = cluster.shard("s0")
    with s0.primary.client() as primary:
        for _ in range(5):
            primary.incr(membership.BARRIER_KEY)
        assert primary.execute_command("WAIT", 2, 5000) == 2
    s0.primary.signal(signal.SIGKILL)
    wait_for("the primary to die", lambda: not s0.primary.alive(), timeout=10)
    return cluster


def test_a_killed_primary_passes_every_check_of_the_failover_rule(
    killed_primary: LocalCluster,
) -> None:
    results = failover_rule_checks(killed_primary)
    assert [(r.name, r.ok) for r in results] == [
        ("MasterDown", True), ("ReplicasReachable", True), ("ReplicaCaughtUp", True),
        ("PeerCheck", True), ("MinActiveHosts", True),
    ]  # fmt: skip
    caught_up = results[2]
    offsets = caught_up.data["offsets"]
    assert set(offsets) == {r.name for r in killed_primary.shard("s0").replicas}
    assert len(set(offsets.values())) == 1  # both replicas hold every write


def test_a_stopped_primary_passes_every_check_of_the_failover_rule(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    # Silence, not a refusal: both attempts at the primary wait out their timeout.
    cluster = start_cluster_on_suite_control(shards=2, replicas=2)
    primary = cluster.shard("s0").primary
    primary.signal(signal.SIGSTOP)
    try:
        results = failover_rule_checks(cluster)
    finally:
        primary.signal(signal.SIGCONT)
    assert [(r.name, r.ok) for r in results] == [
        ("MasterDown", True), ("ReplicasReachable", True), ("ReplicaCaughtUp", True),
        ("PeerCheck", True), ("MinActiveHosts", True),
    ], [r.detail for r in results]  # fmt: skip


# MasterDown's window for silence: a first PING with a 0.25 s timeout and a second sent 50 ms
# after it (`checks.SECOND_ATTEMPT_AFTER`), so a primary silent for ~0.3 s is down. The margins
# are wide for a loaded CI machine: 0.1 s and 0.6 s.
def test_a_primary_stalled_well_within_master_downs_window_is_not_down(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    result = master_down_during_a_stall(start_cluster_on_suite_control(shards=1, replicas=1), 0.1)
    assert not result.ok, result.detail


def test_a_primary_stalled_well_beyond_master_downs_window_is_down(
    start_cluster_on_suite_control: Callable[..., LocalCluster],
) -> None:
    result = master_down_during_a_stall(start_cluster_on_suite_control(shards=1, replicas=1), 0.6)
    assert result.ok, result.detail


def test_one_evaluation_reads_each_replica_over_a_single_connection(
    killed_primary: LocalCluster,
) -> None:
    replicas = killed_primary.shard("s0").replicas
    watchers = [replica.client() for replica in replicas]
    try:
        before = [int(w.info("stats")["total_connections_received"]) for w in watchers]
        failover_rule_checks(killed_primary)
        after = [int(w.info("stats")["total_connections_received"]) for w in watchers]
    finally:
        for watcher in watchers:
            watcher.close()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]


def test_the_checks_ask_the_nodes_nothing_but_their_questions(
    killed_primary: LocalCluster,
) -> None:
    # Every probe is a new connection: a greeting on each (HELLO, CLIENT SETINFO and the like,
    # some of which Redis 7.0 refuses) would add round trips to every one of them.
    nodes = [*killed_primary.shard("s0").replicas, killed_primary.shard("s1").primary]
    watchers = [node.client() for node in nodes]

    def greetings_and_errors() -> list[tuple[int, int, int]]:
        seen = []
        for watcher in watchers:
            commands = watcher.info("commandstats")
            setinfo = commands.get("cmdstat_client|setinfo", {}).get("calls", 0)
            hello = commands.get("cmdstat_hello", {}).get("calls", 0)
            errors = watcher.info("errorstats").get("errorstat_ERR", {}).get("count", 0)
            seen.append((int(setinfo), int(hello), int(errors)))
        return seen

    try:
        before = greetings_and_errors()
        failover_rule_checks(killed_primary)
        assert greetings_and_errors() == before
    finally:
        for watcher in watchers:
            watcher.close()
