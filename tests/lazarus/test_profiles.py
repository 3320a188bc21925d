"""Profiles: a few lines of YAML opt a service in; the template generates its rules and
workflows (with overrides), and the stateless profile replaces a dead API host on a testbed."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from chaos.testbed import ControlBackend, running_testbed
from detection.events import new_event
from lazarus_lite.errors import ProfileError
from lazarus_lite.profiles import DEFINITIONS, load_profiles
from lazarus_lite.workflow.references import check_references
from tests.e2e.support import in_store, send, wait_for

REDIS_SHARD = "service: sms-queue\nprofile: redis_shard\nteam: sms-oncall\n"


def test_a_redis_shard_service_gets_its_failover_rules_and_workflow(tmp_path: Path) -> None:
    (tmp_path / "sms.yaml").write_text(REDIS_SHARD)
    rules, workflows = load_profiles(tmp_path)
    assert [r.name for r in rules] == ["sms-queue_master_down", "sms-queue_master_recovered"]
    assert rules[0].criteria.service == "sms-queue" and rules[0].lock == "shard"
    assert rules[0].action.name == "sms-queue.failover"
    assert workflows["sms-queue.failover"].timeout == 1800  # the 30-minute default
    assert check_references(workflows["sms-queue.failover"]) == []


def test_every_generated_workflow_passes_the_load_time_check(tmp_path: Path) -> None:
    """Every profile template, and the shipped service files, give workflows whose steps' reads
    resolve (the templates call `parse_workflow`, which refuses any that does not)."""
    (tmp_path / "sms.yaml").write_text(REDIS_SHARD)
    (tmp_path / "web.yaml").write_text(
        "service: web\nprofile: stateless\nteam: web-oncall\n"
        "parameters: {command: ['{python}', '-m', 'web', '{port}']}\n"
    )
    _, workflows = load_profiles(tmp_path)
    _, shipped = load_profiles(DEFINITIONS / "services")
    assert {"sms-queue.failover", "web.replace_host"} <= set(workflows)
    for workflow in [*workflows.values(), *shipped.values()]:
        assert check_references(workflow) == [], workflow.name


def test_overrides_change_the_generated_workflow(tmp_path: Path) -> None:
    (tmp_path / "sms.yaml").write_text(REDIS_SHARD + "overrides: {workflow_timeout: 20m}\n")
    _, workflows = load_profiles(tmp_path)
    assert workflows["sms-queue.failover"].timeout == 1200


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (REDIS_SHARD.replace("redis_shard", "mainframe"), "field 'profile'"),
        (REDIS_SHARD + "overrides: {workflow_timeout: soon}\n", "overrides.workflow_timeout"),
        ("service: web\nprofile: stateless\nteam: t\n", "field 'parameters.command'"),
        (REDIS_SHARD + "colour: blue\n", "field 'colour'"),
    ],
)
def test_a_bad_service_file_is_refused_naming_the_field(
    tmp_path: Path, text: str, named: str
) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ProfileError) as refused:
        load_profiles(tmp_path)
    assert "bad.yaml" in str(refused.value) and named in str(refused.value)


@pytest.mark.slow
@pytest.mark.parametrize("control", ["redis", "etcd"])
def test_the_stateless_profile_replaces_a_dead_api_host(
    tmp_path: Path, control: ControlBackend
) -> None:
    """On etcd the replacement gets the members' endpoints the rest has: the topology is in
    etcd only, so an API started with the control Redis alone would have no map to route by."""
    with running_testbed(tmp_path / "tb", shards=1, replicas=1, control=control) as testbed:
        old = testbed.api
        send(testbed, "api", signal.SIGKILL)
        event = new_event("HealthcheckDown", environment="dev", region="local",
                          service="ratequeue-api", host=old, source="nagios",
                          data={"check": "healthz"}).model_dump(mode="json")  # fmt: skip
        httpx.post(f"{testbed.lazarus[0]}/v1/events", json=event,
                   headers={"Authorization": f"Bearer {testbed.lazarus_token}"})  # fmt: skip
        url = f"{testbed.lazarus[0]}/v1/events/{event['id']}"
        record = wait_for("the host to be replaced", lambda: (
            r := httpx.get(url).json()).get("outcome") in ("remediated", "escalated") and r,
            timeout=40)  # fmt: skip
        members = list(in_store(testbed, lambda store: store.services.members("ratequeue-api")))
        held = list(in_store(testbed, lambda store: store.services.forensics("ratequeue-api")))
        assert record["outcome"] == "remediated", record["reason"]
        assert old not in members and held == [old]
        assert len(members) == 1
        assert httpx.get(f"{members[0]}/healthz").status_code == 200
        assert httpx.get(f"{members[0]}/v1/topology").json()["epoch"] == 1
        answer = httpx.post(f"{members[0]}/v1/numbers/+14155550100/messages",
                            json={"id": "m-1", "body": "hello"}, timeout=10)  # fmt: skip
        assert answer.status_code == 201, answer.text
