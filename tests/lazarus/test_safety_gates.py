"""Each safety gate made to fire on a real testbed, with its record in the audit trail: stale
events, the per-service rate limit, the regional circuit breaker, the kill switch (before a
workflow starts and mid-workflow), shadow mode with its report, resource locks, and the
control realm."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from chaos.testbed import TestbedState, running_testbed
from detection.events import new_event, parse_event
from lazarus_lite.gates import StaleEventFilter
from tests.e2e.support import (
    auth,
    control_topology,
    controllers_metric,
    decided,
    in_store,
    resume,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow


def post(state: TestbedState, path: str, body: dict, node: int = 0) -> httpx.Response:
    return httpx.post(f"{state.lazarus[node]}{path}", json=body, headers=auth(state), timeout=5)


def first_decision_for(state: TestbedState, shard: str) -> dict:
    def probe() -> dict | None:
        events = httpx.get(f"{state.lazarus[0]}/v1/events", timeout=5).json()["events"]
        final = [e for e in events if e["event"].get("shard") == shard
                 and e["event"]["type"] == "RedisMasterDown"
                 and e["event"]["source"].startswith("sensor")
                 and e["outcome"] not in ("received", "duplicate")]  # fmt: skip
        return final[-1] if final else None

    return wait_for(f"a decision about {shard}", probe, timeout=20)


def master_down(state: TestbedState, shard_id: str, key: str, **changes: object) -> dict:
    shard = control_topology(state).shard(shard_id)
    fields: dict = {
        "environment": "dev", "region": "local", "service": "ratequeue", "shard": shard_id,
        "host": shard.primary.address, "source": "test", "incident_key": key,
        "data": {"master_link_status": "down", "primary": shard.primary.name,
                 "shard_epoch": shard.epoch},
    }  # fmt: skip
    fields.update(changes)
    return new_event("RedisMasterDown", **fields).model_dump(mode="json")


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedState]:
    directory = tmp_path_factory.mktemp("gates") / "tb"
    with running_testbed(directory, shards=3, replicas=2,
                         controller_args=["--max-event-age", "60"]) as state:  # fmt: skip
        yield state


@pytest.fixture
def paused_primary(testbed: TestbedState) -> Iterator[callable]:
    paused: list[str] = []

    def pause(shard: str) -> str:
        name = control_topology(testbed).shard(shard).primary.name
        send(testbed, name, signal.SIGSTOP)
        paused.append(name)
        return name

    yield pause
    for name in paused:
        resume(testbed, name)


def test_an_event_older_than_the_limit_is_dropped_as_stale(testbed: TestbedState) -> None:
    event = master_down(testbed, "s0", "stale-1")
    event["occurred_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert post(testbed, "/v1/events", event).status_code == 202
    record = decided(testbed, event["id"])
    assert record["outcome"] == "stale" and record["gate"] == "stale"
    assert "older than 60 s" in record["reason"]


def test_an_event_dated_past_the_allowed_skew_is_stopped_by_the_stale_gate() -> None:
    # Refused at every intake already; the gate stops one that comes in another way.
    event = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios").model_dump(mode="json")  # fmt: skip
    ahead = parse_event({**event, "occurred_at": "9999-12-31T23:59:59-23:59"})
    stop = StaleEventFilter(max_age_seconds=60, max_ahead_seconds=5).check(ahead)
    assert stop is not None and stop.gate == "stale"
    assert "dated more than 5 s ahead are not acted on" in stop.reason


def test_a_stale_event_counts_as_a_refusal_of_the_stale_gate(testbed: TestbedState) -> None:
    before = controllers_metric(testbed, "lazarus_gate_refusals_total", gate="stale")
    event = master_down(testbed, "s2", "stale-metrics")
    event["occurred_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert post(testbed, "/v1/events", event).status_code == 202
    assert decided(testbed, event["id"])["gate"] == "stale"
    assert controllers_metric(testbed, "lazarus_gate_refusals_total", gate="stale") == before + 1


def test_the_kill_switch_stops_a_failover_before_it_starts(
    testbed: TestbedState, paused_primary: callable
) -> None:
    switch = {"enabled": True, "category": "failover", "reason": "maintenance"}
    assert post(testbed, "/v1/killswitch", switch).status_code == 200
    try:
        before = control_topology(testbed)
        paused_primary("s0")
        record = first_decision_for(testbed, "s0")
    finally:
        post(testbed, "/v1/killswitch", {"enabled": False, "category": "failover"})
    assert record["outcome"] == "no_action" and record["gate"] == "kill_switch"
    assert "maintenance" in record["reason"] and record["workflow_id"] is None
    assert any(n["kind"] == "workflow_cancelled" for n in record["notes"])
    assert control_topology(testbed).shard("s0").primary == before.shard("s0").primary


def test_shadow_mode_decides_records_and_does_not_act(
    testbed: TestbedState, paused_primary: callable
) -> None:
    assert post(testbed, "/v1/shadow", {"enabled": True, "service": "ratequeue"}).is_success
    try:
        before = control_topology(testbed)
        paused_primary("s1")
        record = first_decision_for(testbed, "s1")
        report = httpx.get(f"{testbed.lazarus[0]}/v1/shadow-report").json()["decisions"]
    finally:
        post(testbed, "/v1/shadow", {"enabled": False, "service": "ratequeue"})
    assert record["outcome"] == "no_action" and record["gate"] == "shadow"
    assert record["would_run"] == "ratequeue.failover"
    assert record["quorum"]["passed"]  # it decided as usual
    assert control_topology(testbed).shard("s1").primary == before.shard("s1").primary
    row = next(r for r in report if r["event_id"] == record["event_id"])
    assert row["action"] == "ratequeue.failover"
    assert row["afterwards"] == "the primary is still down and nobody acted"


def test_a_workflow_that_cannot_take_the_shard_lock_escalates_without_acting(
    testbed: TestbedState, paused_primary: callable
) -> None:
    taken = in_store(
        testbed, lambda store: store.locks.acquire("shard", "ratequeue/s2", "someone-else")
    )
    try:
        before = control_topology(testbed)
        paused_primary("s2")
        record = first_decision_for(testbed, "s2")
        workflow_url = f"{testbed.lazarus[0]}/v1/workflows/{record['workflow_id']}"
        workflow = wait_for("the workflow to end", lambda: (
            w := httpx.get(workflow_url).json())["status"] != "running" and w)  # fmt: skip
    finally:
        in_store(testbed, lambda store: store.locks.release(taken))
    assert workflow["status"] == "escalated"
    assert "LockBusy" in workflow["steps"]["acquire_lock"]["error"]
    assert workflow["steps"]["fence_old_primary"]["status"] == "pending"
    assert control_topology(testbed).shard("s2").primary == before.shard("s2").primary


def test_the_kill_switch_stops_a_running_workflow_before_its_next_state_change(
    tmp_path: Path,
) -> None:
    gated = Path(__file__).parents[2] / "scenarios" / "workflows"
    with running_testbed(tmp_path / "tb", shards=2, replicas=2,
                         controller_args=["--workflows", str(gated)]) as testbed:  # fmt: skip
        send(testbed, "s0-primary", signal.SIGKILL)
        record = first_decision_for(testbed, "s0")
        workflow_url = f"{testbed.lazarus[0]}/v1/workflows/{record['workflow_id']}"
        wait_for("the workflow to wait at its gate", lambda: httpx.get(workflow_url).json()[
            "steps"]["hold_after_promotion"]["status"] == "running")  # fmt: skip
        post(testbed, "/v1/killswitch", {"enabled": True, "category": "all"})
        post(testbed, f"/v1/workflows/{record['workflow_id']}/approve",
             {"step": "hold_after_promotion"})  # fmt: skip
        workflow = wait_for("the workflow to end", lambda: (
            w := httpx.get(workflow_url).json())["status"] != "running" and w)  # fmt: skip
        audit = httpx.get(f"{testbed.lazarus[0]}/v1/events/{record['event_id']}").json()
    assert workflow["status"] == "escalated" and "kill_switch" in workflow["escalation"]
    assert workflow["steps"]["repoint_replicas"]["status"] == "failed"
    assert workflow["steps"]["publish_topology"]["status"] == "pending"
    assert audit["outcome"] == "escalated"


def test_the_rate_limit_and_the_circuit_breaker_suspend_actions(tmp_path: Path) -> None:
    args = ["--rate-limit-threshold", "2", "--breaker-threshold", "2", "--breaker-window", "4"]
    with running_testbed(tmp_path / "tb", shards=2, replicas=1, controller_args=args) as testbed:
        decisions = []
        for number in range(3):
            event = master_down(testbed, "s0", f"rate-{number}")
            post(testbed, "/v1/events", event)
            decisions.append(decided(testbed, event["id"]))
        assert [d["outcome"] for d in decisions[:2]] == ["escalated", "escalated"]  # healthy
        assert decisions[2]["outcome"] == "no_action" and decisions[2]["gate"] == "rate_limit"
        assert "3 incidents of ratequeue" in decisions[2]["reason"]
        limits = httpx.get(f"{testbed.lazarus[1]}/v1/rate-limits/ratequeue").json()
        assert limits["suspended"] is True

        for service in ("billing", "voice", "video"):
            outage = new_event(
                "HealthcheckDown", environment="dev", region="eu", service=service,
                host=f"{service}-1", source="nagios",
            ).model_dump(mode="json")  # fmt: skip
            post(testbed, "/v1/events", outage)
            decided(testbed, outage["id"])
        in_eu = master_down(testbed, "s1", "breaker-1", region="eu")
        post(testbed, "/v1/events", in_eu)
        record = decided(testbed, in_eu["id"])
        assert record["outcome"] == "no_action" and record["gate"] == "circuit_breaker"
        breaker = httpx.get(f"{testbed.lazarus[0]}/v1/breaker", params={"region": "eu"}).json()
        assert breaker["breakers"][0]["open"] is True
        wait_for("the breaker to close by itself", lambda: not httpx.get(
            f"{testbed.lazarus[0]}/v1/breaker", params={"region": "eu"}).json()[
            "breakers"][0]["open"], timeout=10)  # fmt: skip


def test_a_node_outside_its_control_realm_refuses_to_act(tmp_path: Path) -> None:
    args = ["--region", "local", "--control-realm", "us-east-1"]
    with running_testbed(tmp_path / "tb", shards=1, replicas=1, controller_args=args) as testbed:
        event = master_down(testbed, "s0", "realm-1")
        post(testbed, "/v1/events", event)
        record = decided(testbed, event["id"])
    assert record["outcome"] == "no_action" and record["gate"] == "control_realm"
    assert "outside the control realm" in record["reason"]
