"""Who watches the watchers, on the local testbed: a shard whose sensors died is still failed
over, a silent sensor is reported, and a shard left without a writable primary is escalated
with the reason and marked in the topology, until it can write again; a shard short of a listed
replica is escalated once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.load import BackgroundLoad, LoadProfile
from chaos.testbed import TestbedNode, TestbedState, running_testbed
from tests.e2e.support import (
    LOAD,
    control_topology,
    failed_over,
    in_store,
    lazarus_events,
    restart_with_boot_arguments,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow

SENSOR_SILENCE_AFTER = 4
UNWRITABLE_AFTER = 6
DEGRADED_AFTER = 4


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedState]:
    with running_testbed(
        tmp_path / "tb",
        shards=2,
        replicas=2,
        sensor_args=["--heartbeat-every", "1"],
        controller_args=[
            "--sensor-silence-after", str(SENSOR_SILENCE_AFTER),
            "--unwritable-after", str(UNWRITABLE_AFTER),
            "--degraded-after", str(DEGRADED_AFTER),
        ],
    ) as state:  # fmt: skip
        yield state


def sensors_of(state: TestbedState, shard: str) -> list[TestbedNode]:
    return [n for n in state.nodes if n.role == "sensor" and n.shard == shard]


def heartbeat_seen(state: TestbedState, sensor: str) -> bool:
    return in_store(state, lambda store: store.sensors.heartbeat(sensor)) is not None


def decisions(state: TestbedState, event_type: str, since: float) -> list[dict]:
    return [
        e
        for e in lazarus_events(state, since=since, limit=1000)
        if e["event"]["type"] == event_type and e["outcome"] not in ("received", "duplicate")
    ]


def test_a_primary_killed_after_its_sensors_died_is_failed_over_by_the_controllers_report(
    testbed: TestbedState,
) -> None:
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD)).start()
    try:
        time.sleep(1.5)
        for sensor in sensors_of(testbed, "s0"):
            os.kill(sensor.pid, signal.SIGKILL)
        killed_at = time.time()
        send(testbed, "s0-primary", signal.SIGKILL)
        wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"), timeout=30)
        wait_for(
            "an acknowledged write after the kill",
            lambda: load.ledger.first_ack_after(killed_at + 0.5, "s0"),
            timeout=30,
        )
    finally:
        ledger = load.join()
    assert ledger.lost() == set()
    reports = decisions(testbed, "RedisMasterDown", killed_at)
    assert reports, "no decision recorded about the dead primary"
    assert all(r["event"]["source"].startswith("lazarus:") for r in reports)
    assert reports[-1]["outcome"] in ("scheduled", "remediated"), reports[-1]


def test_a_sensor_that_falls_silent_is_reported_once_with_what_was_seen(
    testbed: TestbedState,
) -> None:
    sensor = sensors_of(testbed, "s1")[0]
    wait_for("the sensor's first heartbeat", lambda: heartbeat_seen(testbed, sensor.name))
    silenced_at = time.time()
    os.kill(sensor.pid, signal.SIGKILL)
    [report] = wait_for(
        "the silent sensor reported",
        lambda: decisions(testbed, "SensorSilent", silenced_at - 10),
        timeout=SENSOR_SILENCE_AFTER + 15,
    )
    assert report["outcome"] == "escalated"
    assert sensor.name in report["reason"] and "no heartbeat" in report["reason"]
    time.sleep(3)  # every controller node keeps watching: still one report
    assert len(decisions(testbed, "SensorSilent", silenced_at - 10)) == 1


def test_a_shard_left_without_a_writable_primary_is_escalated_and_marked_until_it_writes(
    testbed: TestbedState, tmp_path: Path
) -> None:
    # Both replicas gone: the primary answers but may accept no write (no replica acknowledges
    # it), and no failover can help; nothing must stay silent about it.
    replicas = [testbed.node("s0-replica1"), testbed.node("s0-replica2")]
    stopped_at = time.time()
    for replica in replicas:
        os.kill(replica.pid, signal.SIGKILL)
    [report] = wait_for(
        "the unwritable shard escalated",
        lambda: decisions(testbed, "ShardUnwritable", stopped_at),
        timeout=UNWRITABLE_AFTER + 15,
    )
    assert report["outcome"] == "escalated"
    assert "0 of the 1 replicas" in report["reason"], report["reason"]
    assert time.time() - stopped_at >= UNWRITABLE_AFTER
    wait_for(
        "the topology to say s0 is unwritable",
        lambda: control_topology(testbed).shard("s0").status == "unwritable",
        timeout=10,
    )
    assert control_topology(testbed).shard("s1").status == "ok"
    restart_with_boot_arguments(tmp_path / "tb", replicas[0])  # the shard keeper rejoins it
    wait_for(
        "s0 to be marked ok again",
        lambda: control_topology(testbed).shard("s0").status == "ok",
        timeout=30,
    )


def test_a_shard_short_of_a_listed_replica_is_escalated_once_naming_it(
    testbed: TestbedState,
) -> None:
    replica = testbed.node("s1-replica2")
    killed_at = time.time()
    os.kill(replica.pid, signal.SIGKILL)
    [report] = wait_for(
        "the degraded shard escalated",
        lambda: decisions(testbed, "ShardDegraded", killed_at),
        timeout=DEGRADED_AFTER + 15,
    )
    assert time.time() - killed_at >= DEGRADED_AFTER
    assert report["outcome"] == "escalated"
    assert report["event"]["data"]["replica"] == "s1-replica2", report["event"]
    assert "1 of its 2 listed replicas" in report["reason"], report["reason"]
    time.sleep(3)  # every controller node keeps watching: still one report
    assert len(decisions(testbed, "ShardDegraded", killed_at)) == 1
    assert control_topology(testbed).shard("s1").status == "ok"  # it still writes


def test_a_second_kill_a_second_after_the_first_failover_fails_over_again_quickly(
    testbed: TestbedState,
) -> None:
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD)).start()
    try:
        time.sleep(1.5)
        send(testbed, "s0-primary", signal.SIGKILL)
        first = wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"))
        promoted = first.shard("s0").primary.name
        time.sleep(1)
        second_at = time.time()
        send(testbed, promoted, signal.SIGKILL)
        wait_for(
            "s0 to fail over again",
            lambda: failed_over(testbed, "s0", promoted),
            timeout=20,
        )
        wait_for(
            "an acknowledged write after the second kill",
            lambda: load.ledger.first_ack_after(second_at + 0.5, "s0"),
            timeout=20,
        )
        recovered_in = time.time() - second_at
    finally:
        ledger = load.join()
    assert ledger.lost() == set()
    assert recovered_in < 20
