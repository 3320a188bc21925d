"""Returning nodes on the local testbed (real redis-server processes, sensors and controllers,
real signals): a primary killed and failed away from, then restarted with its boot arguments,
has its data copied and, its replacement keeping the shard at its replica target, is released
parked (below the target it rejoins: tests/lazarus/test_forensics_rejoin.py); a replica
restarted with its boot arguments follows the current primary, and a later failover of its
shard completes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chaos.testbed import TestbedState, record_pid, running_testbed
from ratequeue import membership
from ratequeue.topology import NodeRef
from tests.e2e.support import (
    control_topology,
    failed_over,
    restart_with_boot_arguments,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedState]:
    with running_testbed(tmp_path / "tb", shards=1, replicas=2) as state:
        yield state


def follows(node: NodeRef, primary: NodeRef) -> bool:
    try:
        with redis.Redis(host=node.host, port=node.port, socket_timeout=1) as conn:
            info = conn.info("replication")
    except (redis.RedisError, OSError):
        return False
    host = primary.peer_host or primary.host
    return membership.points_at(info, host, primary.port) and info["master_link_status"] == "up"


def restart(testbed: TestbedState, directory: Path, name: str) -> None:
    pid = restart_with_boot_arguments(directory, testbed.node(name))
    record_pid(directory, name, pid)


def test_a_killed_primary_restarted_after_its_replacement_is_copied_and_released(
    testbed: TestbedState, tmp_path: Path
) -> None:
    # The testbed's controllers have an actuator: the failover lists a replacement, so the old
    # primary that comes back finds the shard at its target and stays out of it (no N + 1).
    directory = tmp_path / "tb"
    target = control_topology(testbed).shard("s0").replica_target
    send(testbed, "s0-primary", signal.SIGKILL)
    wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"))
    restart(testbed, directory, "s0-primary")

    def released() -> bool:
        shard = control_topology(testbed).shard("s0")
        return not shard.forensics and len(shard.replicas) == target

    wait_for("the old primary to be released", released, timeout=40)
    shard = control_topology(testbed).shard("s0")
    assert "s0-primary" not in [r.name for r in shard.replicas]
    old = testbed.node("s0-primary")
    with redis.Redis(host=old.host, port=old.port, socket_timeout=1) as conn:
        assert membership.is_parked(conn.info("replication"))
    # The other keepers may have copied the node too; they discard their copies once they see
    # it settled, so one copy per return remains.
    place = directory / "forensics" / "s0"
    wait_for("one copy to remain", lambda: len(list(place.iterdir())) == 1, timeout=40)
    (copy,) = place.iterdir()
    assert copy.name.startswith("s0-primary@") and (copy / "dump.rdb").exists()


def test_a_restarted_replica_follows_the_current_primary_and_its_shard_fails_over_later(
    testbed: TestbedState, tmp_path: Path
) -> None:
    directory = tmp_path / "tb"
    send(testbed, "s0-replica1", signal.SIGKILL)
    restart(testbed, directory, "s0-replica1")
    primary = control_topology(testbed).shard("s0").primary
    replica = testbed.node("s0-replica1")
    again = NodeRef(name=replica.name, host=replica.host, port=replica.port)
    wait_for("the replica to follow the primary", lambda: follows(again, primary), timeout=30)

    send(testbed, "s0-primary", signal.SIGKILL)
    after = wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"))
    assert after.shard("s0").primary.name != "s0-primary"
