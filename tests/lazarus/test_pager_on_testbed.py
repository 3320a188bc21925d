"""The pager policy on a real testbed: the sensors page directly and tell the controller in
parallel; a remediated failover acknowledges then resolves that page (same dedup_key: the
incident key); a refused one escalates it to a person. The
PagerDuty and Slack endpoints are a recording HTTP server on loopback."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
import yaml

from chaos.testbed import TestbedState, running_testbed
from detection.events import new_event
from tests.e2e.support import control_topology, send, wait_for
from tests.lazarus.recorders import HttpRecorder, serving_http_recorder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorder() -> Iterator[HttpRecorder]:
    with serving_http_recorder() as recorder:
        yield recorder


@pytest.fixture(scope="module")
def testbed(recorder: HttpRecorder, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[TestbedState]:  # fmt: skip
    directory = tmp_path_factory.mktemp("pager")
    config = directory / "notifications.yaml"
    config.write_text(yaml.safe_dump({
        "retry": {"attempts": 2, "backoff_seconds": 0.05, "timeout_seconds": 2},
        "teams": {"ratequeue-oncall": {
            "slack": {"webhook_url": f"{recorder.url}/slack/T0/B0/x"},
            "pagerduty": {"routing_key": "R" * 32, "url": f"{recorder.url}/v2/enqueue"},
        }},
        "services": {"ratequeue": {"team": "ratequeue-oncall", "channels": ["pagerduty", "slack"]}},
    }))  # fmt: skip
    pager = ["--notifications", str(config)]
    with running_testbed(directory / "tb", shards=2, replicas=2, controller_args=pager,
                         sensor_args=pager) as state:  # fmt: skip
        yield state


def test_the_sensor_pages_and_the_controller_acknowledges_then_resolves_the_page(
    testbed: TestbedState, recorder: HttpRecorder
) -> None:
    incident = "ratequeue/s0/RedisMasterDown/s0-primary@1"
    send(testbed, "s0-primary", signal.SIGKILL)

    def remediated() -> dict | None:
        events = httpx.get(f"{testbed.lazarus[0]}/v1/events").json()["events"]
        done = [e for e in events if e["outcome"] == "remediated"]
        return done[0] if done else None

    record = wait_for("the failover to be remediated", remediated, timeout=30)
    actions = [(e["event_action"], e["dedup_key"]) for e in recorder.pagerduty_events()
               if e["dedup_key"] == incident]  # fmt: skip
    # A sensor pages first; a second sensor's trigger of the same incident may come later and
    # is deduplicated by PagerDuty (same dedup_key).
    assert actions[0] == ("trigger", incident)
    assert [a for a, _ in actions if a != "trigger"] == ["acknowledge", "resolve"]
    kinds = [n["data"].get("action") for n in record["notes"] if n["kind"] == "notification"]
    assert "acknowledge" in kinds and "resolve" in kinds


def test_a_refused_remediation_escalates_the_page_to_a_person(
    testbed: TestbedState, recorder: HttpRecorder
) -> None:
    shard = control_topology(testbed).shard("s1")
    event = new_event(
        "RedisMasterDown", environment="dev", region="local", service="ratequeue", shard="s1",
        host=shard.primary.address, source="sensor-cut-off", incident_key="ratequeue/s1/test",
        data={"master_link_status": "down", "primary": shard.primary.name,
              "shard_epoch": shard.epoch},
    ).model_dump(mode="json")  # fmt: skip
    httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event,
               headers={"Authorization": f"Bearer {testbed.lazarus_token}"})  # fmt: skip
    triggers = wait_for("an escalation page", lambda: [
        e for e in recorder.pagerduty_events()
        if e["dedup_key"] == "ratequeue/s1/test" and e["event_action"] == "trigger"])  # fmt: skip
    assert "quorum not reached" in str(triggers[0]["payload"])
    # Slack and PagerDuty are delivered independently: the message may land after the page.
    wait_for("the escalation in Slack", lambda: [
        m for m in recorder.received("/slack/") if "ratequeue/s1/test" in str(m)])  # fmt: skip
