"""`ratequeue-chaos testbed up --failover sentinel`, end to end on real redis-server and
redis-sentinel processes: three sentinels (quorum 2) watch every shard, no controller or sensor
runs, the API routes by the primaries Sentinel names and follows the one it promotes after a
kill; one paused sentinel leaves the API healthy; `--ack async` acknowledges enqueues that no
replica holds yet; `down` stops the sentinels too."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from chaos import testbed
from chaos.testbed import AckMode, TestbedState, running_testbed
from common.sentinel_processes import QUORUM, SentinelTimers, promotable_replicas
from ratequeue.topology import Shard
from tests.e2e.support import cli_testbed, role, send, topology, wait_for

# Small timers, so Sentinel agrees and promotes within seconds (down-after + an election), but
# a down-after well above Sentinel's fixed 1 s reconnection period: at 500 ms a sentinel can
# suspect the replica it has just switched to before it has reconnected to it, and fail the
# shard over again (README, "Under Redis Sentinel").
FAST = SentinelTimers(down_after_ms=2000, failover_timeout_ms=3000)

pytestmark = pytest.mark.slow  # each test starts a testbed: redis nodes, sentinels, the API


def sentinel_view(address: str, shard: str) -> dict:
    host, port = address.split(":")
    with redis.Redis(host, int(port), socket_timeout=2) as conn:
        return conn.sentinel_master(shard)


def replicas_promotable(address: str, shard: str) -> int:
    host, port = address.split(":")
    with redis.Redis(host, int(port), socket_timeout=2) as conn:
        return promotable_replicas(conn, shard)


def enqueue(state: TestbedState, number: str, message_id: str) -> httpx.Response:
    return httpx.post(
        f"{state.api}/v1/numbers/{number}/messages",
        json={"id": message_id, "body": "hello"},
        timeout=10,
    )


def test_a_sentinel_testbed_runs_three_sentinels_and_no_controllers_and_down_stops_them(
    tmp_path: Path,
) -> None:
    options = ["--shards", "2", "--replicas", "2", "--no-supervise"]
    sentinel = ["--failover", "sentinel", "--down-after-ms", "700"]
    with cli_testbed(tmp_path / "bed", *options, *sentinel) as state:
        sentinels = [n for n in state.nodes if n.role == "sentinel"]
        assert len(sentinels) == 3 and all(testbed.process_alive(n) for n in sentinels)
        assert not [n for n in state.nodes if n.role in {"lazarus", "sensor"}]
        assert (state.failover, state.ack, state.lazarus) == ("sentinel", "wait", [])

        first = topology(state)
        for shard in first.shards:
            for address in state.sentinels:
                view = wait_for(
                    f"{address} to see {shard.id} with its replicas and the other sentinels",
                    lambda a=address, s=shard.id: (
                        (v := sentinel_view(a, s))["num-slaves"] == 2
                        and v["num-other-sentinels"] == 2
                        and v
                    ),
                )
                assert (view["port"], view["quorum"]) == (shard.primary.port, QUORUM)
                assert view["down-after-milliseconds"] == 700
        assert enqueue(state, "+14155550100", "m-1").status_code == 201

        # One sentinel paused: the other two agree, so the API stays healthy and routes.
        send(state, sentinels[0].name, signal.SIGSTOP)
        try:
            health = httpx.get(f"{state.api}/healthz", timeout=10)
            assert enqueue(state, "+14155550101", "m-2").status_code == 201
        finally:
            send(state, sentinels[0].name, signal.SIGCONT)
        assert health.status_code == 200, health.text
        checks = {c["name"]: c for c in health.json()["checks"]}
        assert checks["control_store"]["ok"], checks
        # The store and the sentinels are checked apart: the paused one is named.
        assert checks["sentinels"]["ok"], checks
        assert checks["sentinels"]["detail"].startswith("2 of 3 answer; not answering: "), checks


def test_a_killed_primary_is_replaced_by_sentinel_and_the_api_routes_to_the_new_one(
    tmp_path: Path,
) -> None:
    with running_testbed(
        tmp_path / "bed", shards=1, replicas=2, failover="sentinel", sentinel_timers=FAST
    ) as state:
        before = topology(state).shard("s0")
        wait_for(
            "every sentinel to be able to promote both replicas",
            lambda: all(replicas_promotable(a, "s0") == 2 for a in state.sentinels),
        )
        assert enqueue(state, "+14155550100", "before").status_code == 201

        send(state, before.primary.name, signal.SIGKILL)

        # The API follows a majority of the sentinels, and the one left out may hear of the
        # switch a moment later (their hello messages): what must hold is that the API and
        # every sentinel come to name the same replica, and it answers as a master.
        def routed_where_every_sentinel_says() -> Shard | None:
            shard = topology(state).shard("s0")
            ports = {sentinel_view(a, "s0")["port"] for a in state.sentinels}
            if shard.primary.name == before.primary.name or ports != {shard.primary.port}:
                return None
            return shard if role(shard.primary) == "master" else None

        after = wait_for(
            "the API and every sentinel to name the replica Sentinel promoted",
            routed_where_every_sentinel_says,
            timeout=60,
        )
        assert after.primary.name in {r.name for r in before.replicas}
        answer = wait_for(
            "an enqueue acknowledged by the new primary",
            lambda: (r := enqueue(state, "+14155550100", "after")).status_code == 201 and r,
            timeout=30,
        )
        assert answer.json()["shard"] == "s0"
        # Settled: for twice the failover-timeout (how long Sentinel waits before it tries a
        # failover of a master again) the promoted replica is the shard's only master and every
        # sentinel names it.
        watch_until = time.monotonic() + 2 * FAST.failover_timeout_ms / 1000
        while time.monotonic() < watch_until:
            masters = [r.name for r in before.replicas if role(r) == "master"]
            named = {sentinel_view(a, "s0")["port"] for a in state.sentinels}
            assert (masters, named) == ([after.primary.name], {after.primary.port})
            time.sleep(0.1)


@pytest.mark.parametrize(("ack", "status"), [("async", 201), ("wait", 503)])
def test_an_enqueue_no_replica_holds_is_acknowledged_only_with_async_acknowledgement(
    tmp_path: Path, ack: AckMode, status: int
) -> None:
    # Sentinel must not fail over meanwhile: its down-after is far longer than the test.
    calm = SentinelTimers(down_after_ms=60_000)
    with running_testbed(tmp_path / "bed", shards=1, replicas=1, failover="sentinel", ack=ack,
                         sentinel_timers=calm) as state:  # fmt: skip
        replica = topology(state).shard("s0").replicas[0]
        send(state, replica.name, signal.SIGSTOP)  # it acknowledges nothing now
        try:
            answer = enqueue(state, "+14155550100", "unreplicated")
        finally:
            send(state, replica.name, signal.SIGCONT)
        assert answer.status_code == status, answer.text
