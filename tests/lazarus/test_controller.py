"""Controller nodes on a running testbed: event intake over REST, the audit trail, and the cases
where the right answer is to escalate and not act (no rule, quorum refused, several shards)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from chaos.testbed import (
    TestbedState,
    process_alive,
    record_pid,
    running_testbed,
    spawn_command,
)
from common.http_processes import wait_until_healthy
from detection.events import new_event
from detection.streams import EVENTS_STREAM
from tests.e2e.support import (
    auth,
    control_topology,
    controllers_metric,
    decided,
    lazarus_events,
    resume,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedState]:
    directory = tmp_path_factory.mktemp("ctl") / "tb"
    retry = ["--incident-retry-seconds", "1"]
    with running_testbed(directory, shards=2, replicas=2, controller_args=retry) as state:
        yield state


def stream_length(state: TestbedState) -> int:
    """Entries in the event stream other than the sensors' periodic heartbeats."""
    with redis.Redis.from_url(state.control) as conn:
        entries = conn.xrange(EVENTS_STREAM)
    return sum(1 for _, fields in entries if b'"SensorHeartbeat"' not in fields[b"event"])


def master_down_event(state: TestbedState, shard_id: str, **changes: object) -> dict:
    shard = control_topology(state).shard(shard_id)
    fields: dict = {
        "environment": "dev", "region": "local", "service": "ratequeue", "shard": shard_id,
        "host": shard.primary.address, "source": "sensor-cut-off",
        "incident_key": f"test/{shard_id}/{changes.pop('tag', 'x')}",
        "data": {"master_link_status": "down", "primary": shard.primary.name,
                 "shard_epoch": shard.epoch},
    }  # fmt: skip
    fields.update(changes)
    return new_event("RedisMasterDown", **fields).model_dump(mode="json")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('{"id": "e1"', "not valid JSON"),
        ('{"id": "e1", "type": "RedisMasterDown"}', "field 'environment'"),
        ('{"id": "e1", "type": "PrimaryExploded", "environment": "dev", "region": "r", '
         '"service": "s", "host": "h", "source": "s", "occurred_at": "2026-01-01T00:00:00Z"}',
         "field 'type'"),
        ('{"id": "e1", "type": "RedisMasterDown", "environment": "dev", "region": "r", '
         '"service": "s", "host": "h", "source": "s", "occurred_at": "yesterday"}',
         "field 'occurred_at'"),
    ],
)  # fmt: skip
def test_a_malformed_event_is_refused_naming_the_field_and_nothing_is_deposited(
    testbed: TestbedState, body: str, named: str
) -> None:
    before = stream_length(testbed)
    answer = httpx.post(
        f"{testbed.lazarus[0]}/v1/events", content=body, timeout=5, headers=auth(testbed)
    )
    assert answer.status_code == 400
    assert named in answer.json()["error"]["message"]
    assert stream_length(testbed) == before


def test_an_event_no_rule_matches_is_escalated(testbed: TestbedState) -> None:
    event = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios").model_dump(mode="json")  # fmt: skip
    answer = httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event, headers=auth(testbed))
    assert answer.status_code == 202
    record = decided(testbed, event["id"])
    assert record["outcome"] == "escalated"
    assert record["reason"] == "no rule matches this event"


def test_a_down_report_for_a_healthy_primary_is_refused_by_the_quorum(
    testbed: TestbedState,
) -> None:
    before = control_topology(testbed)
    event = master_down_event(testbed, "s0", tag="healthy")
    httpx.post(f"{testbed.lazarus[2]}/v1/events", json=event, headers=auth(testbed))
    record = decided(testbed, event["id"])

    assert record["outcome"] == "escalated" and record["rule"] == "ratequeue_master_down"
    assert record["quorum"]["passed"] == [] and len(record["verdicts"]) == 3
    for verdict in record["verdicts"]:
        master_down = next(r for r in verdict["results"] if r["name"] == "MasterDown")
        assert not master_down["ok"] and "answers" in master_down["detail"]
    assert record["workflow_id"] is None
    assert control_topology(testbed) == before


def test_the_quorums_pings_show_in_every_nodes_probe_latency_metrics(
    testbed: TestbedState,
) -> None:
    before = controllers_metric(testbed, "lazarus_probe_seconds_count", result="ok")
    event = master_down_event(testbed, "s1", tag="probed")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event, headers=auth(testbed))
    decided(testbed, event["id"])
    # Each of the three nodes PINGs the healthy primary at least once for MasterDown.
    assert controllers_metric(testbed, "lazarus_probe_seconds_count", result="ok") >= before + 3


def test_a_report_about_a_former_primary_is_stale_and_not_acted_on(testbed: TestbedState) -> None:
    event = master_down_event(testbed, "s1", tag="stale")
    event["data"]["primary"] = "s1-old-primary"
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event, headers=auth(testbed))
    record = decided(testbed, event["id"])
    assert record["outcome"] == "escalated"
    details = [r["detail"] for v in record["verdicts"] for r in v["results"]
               if r["name"] == "MasterDown"]  # fmt: skip
    assert details and all(d.startswith("stale:") for d in details)


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", "Basic abc"])
def test_a_mutating_request_without_the_right_token_gets_401_and_changes_nothing(
    testbed: TestbedState, header: str | None
) -> None:
    before = stream_length(testbed)
    event = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios").model_dump(mode="json")  # fmt: skip
    headers = {"Authorization": header} if header else {}
    for path, body in (("/v1/events", event), ("/v1/killswitch", {"enabled": True}),
                       ("/v1/shadow", {"enabled": True})):  # fmt: skip
        answer = httpx.post(f"{testbed.lazarus[0]}{path}", json=body, headers=headers)
        assert answer.status_code == 401, path
        assert answer.json()["error"]["code"] == "unauthorized"
    assert stream_length(testbed) == before
    assert httpx.get(f"{testbed.lazarus[0]}/v1/killswitch").json()["engaged"] == {}
    assert httpx.get(f"{testbed.lazarus[0]}/v1/shadow").json()["services"] == []


def test_an_unknown_event_id_is_a_404_with_a_json_error(testbed: TestbedState) -> None:
    answer = httpx.get(f"{testbed.lazarus[0]}/v1/events/nope")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_two_shards_down_at_once_is_escalated_and_nothing_is_promoted(tmp_path: Path) -> None:
    with running_testbed(tmp_path / "tb", shards=3, replicas=2) as testbed:
        before = control_topology(testbed)
        send(testbed, "s0-primary", signal.SIGKILL)
        send(testbed, "s1-primary", signal.SIGKILL)

        def both_decided() -> list[dict] | None:
            events = httpx.get(f"{testbed.lazarus[0]}/v1/events").json()["events"]
            firsts = [e for e in events if e["outcome"] not in ("received", "duplicate")]
            return firsts if {e["event"]["shard"] for e in firsts} >= {"s0", "s1"} else None

        for record in wait_for("both incidents to be decided", both_decided, timeout=20):
            assert record["outcome"] == "escalated"
            failed = {r["name"] for v in record["verdicts"] for r in v["results"] if not r["ok"]}
            assert failed == {"PeerCheck"}
        assert control_topology(testbed).epoch == before.epoch


def test_a_node_reached_as_its_own_peer_is_one_vote_and_alone_fails_nothing_over(
    tmp_path: Path,
) -> None:
    """lazarus2 and lazarus3 paused (two of three down), lazarus1 listing itself among its peers
    under a name the settings cannot tell is its own (localhost, not taken for 127.0.0.1), and
    s0's primary killed: lazarus1's two answers are one vote, the quorum of two is not reached."""
    directory = tmp_path / "tb"
    with running_testbed(directory, shards=1, replicas=2) as testbed:
        lazarus1 = testbed.node("lazarus1")
        assert lazarus1.restart_command is not None
        itself = f"http://localhost:{lazarus1.port}"
        os.kill(lazarus1.pid, signal.SIGTERM)
        wait_for("lazarus1 to stop", lambda: not process_alive(lazarus1), timeout=20)
        again = spawn_command(directory, "lazarus1", [*lazarus1.restart_command, "--peer", itself])
        record_pid(directory, "lazarus1", again.pid)  # so that `down` stops it
        healthz = f"{testbed.lazarus[0]}/healthz"
        assert wait_until_healthy(again, healthz, timeout=60) == "healthy"
        old_primary = control_topology(testbed).shard("s0").primary.name
        since = time.time()
        send(testbed, "lazarus2", signal.SIGSTOP)
        send(testbed, "lazarus3", signal.SIGSTOP)
        try:
            send(testbed, old_primary, signal.SIGKILL)
            event = master_down_event(testbed, "s0", tag="self-peer")
            httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event, headers=auth(testbed))
            record = decided(testbed, event["id"], timeout=30)
            # The sensors' and the shard watch's own reports of the kill, decided alike.
            time.sleep(5)
            acted = [e for e in lazarus_events(testbed, since=since, limit=100)
                     if e["outcome"] in ("scheduled", "remediated")]  # fmt: skip
            primary = control_topology(testbed).shard("s0").primary.name
        finally:
            resume(testbed, "lazarus2")
            resume(testbed, "lazarus3")
        assert record["outcome"] == "escalated", record["reason"]
        assert record["quorum"]["passed"] == ["lazarus1"]
        assert record["quorum"]["not_counted"] == [f"lazarus1 via {itself}: this node's own id"]
        assert "quorum not reached: 1 of 2" in record["reason"]
        assert "counted: lazarus1 passed" in record["reason"], record["reason"]
        assert acted == [] and primary == old_primary


def test_after_a_recovery_the_same_incident_key_is_decided_again_not_dropped(
    testbed: TestbedState,
) -> None:
    first = master_down_event(testbed, "s0", tag="flap")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=first, headers=auth(testbed))
    assert decided(testbed, first["id"])["outcome"] == "escalated"
    recovered = new_event(
        "RedisMasterRecovered", environment="dev", region="local", service="ratequeue",
        shard="s0", host=first["host"], source="sensor-cut-off",
        incident_key=first["incident_key"],
    ).model_dump(mode="json")  # fmt: skip
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=recovered, headers=auth(testbed))
    assert decided(testbed, recovered["id"])["outcome"] == "recorded"
    again = master_down_event(testbed, "s0", tag="flap")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=again, headers=auth(testbed))
    record = decided(testbed, again["id"])
    assert record["outcome"] == "escalated" and record["quorum"] is not None


def test_a_declined_incident_reported_again_later_is_decided_afresh(testbed: TestbedState) -> None:
    first = master_down_event(testbed, "s1", tag="again")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=first, headers=auth(testbed))
    assert decided(testbed, first["id"])["outcome"] == "escalated"
    time.sleep(1.2)  # the testbed's controllers retry a declined incident after 1 s
    again = master_down_event(testbed, "s1", tag="again")
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=again, headers=auth(testbed))
    record = decided(testbed, again["id"])
    assert record["outcome"] == "escalated" and record["quorum"] is not None
