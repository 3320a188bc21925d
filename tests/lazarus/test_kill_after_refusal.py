"""A real kill right after a refused false alarm about the same primary (staging soak run B,
cycle 19): the kill's reports are decided on their own quorum, not merged into the refusal, and
the shard fails over once. Real redis-server processes, sensors and three controllers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chaos.testbed import TestbedState, running_testbed
from detection.events import new_event
from detection.sensor import incident_key
from tests.e2e.support import (
    auth,
    control_topology,
    decided,
    failed_over,
    lazarus_events,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow

# Far beyond the failover's wait below: a kill merged into the refusal (the defect) is retried
# only after this long, so it cannot pass by retrying.
RETRY_AFTER = "120"


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedState]:
    args = ["--incident-retry-seconds", RETRY_AFTER]
    with running_testbed(tmp_path / "tb", shards=2, replicas=2, controller_args=args) as state:
        yield state


def false_alarm(state: TestbedState, shard_id: str) -> dict:
    """A sensor's report that the shard's primary is down while it answers (one sensor's
    timed-out heartbeat), under the incident key the sensors use."""
    shard = control_topology(state).shard(shard_id)
    return new_event(
        "RedisMasterDown", environment="dev", region="local", service="ratequeue",
        shard=shard_id, host=shard.primary.address, source="sensor-timed-out",
        incident_key=incident_key("ratequeue", shard_id, shard.primary.name, shard.epoch),
        data={"master_link_status": "down", "primary": shard.primary.name,
              "shard_epoch": shard.epoch},
    ).model_dump(mode="json")  # fmt: skip


def test_a_kill_right_after_a_refused_false_alarm_is_failed_over(testbed: TestbedState) -> None:
    old_primary = control_topology(testbed).shard("s0").primary.name
    alarm = false_alarm(testbed, "s0")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=alarm, headers=auth(testbed), timeout=5)
    refused = decided(testbed, alarm["id"])
    assert refused["outcome"] == "escalated" and not refused["quorum"]["passed"]

    send(testbed, old_primary, signal.SIGKILL)
    wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", old_primary), timeout=30)

    reports = [e for e in lazarus_events(testbed, limit=200)
               if e["event"]["incident_key"] == alarm["incident_key"]]  # fmt: skip
    afresh = [note["data"]["refused_event"] for report in reports for note in report["notes"]
              if note["kind"] == "decided_afresh"]  # fmt: skip
    assert alarm["id"] in afresh
    acted = [e for e in reports if e["outcome"] in ("scheduled", "remediated")]
    assert len(acted) == 1  # the kill's reports after the first that acted are its duplicates
