"""Which failover manager an experiment runs under: the file's `failover` and `ack` (or `chaos
run --failover/--ack`'s), what Sentinel cannot be asked for refused up front naming the field,
the hypotheses about Lazarus' decisions skipped with their reason (never passed), and the API's
`sentinels` setting checked before it starts.

Not for: the runs themselves (tests/test_testbed_on_sentinel.py,
tests/test_scenarios_on_both_managers.py start real sentinels).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaos import testbed
from chaos.cli import app
from chaos.errors import ExperimentError, NotApplicable, TestbedError
from chaos.experiments import (
    Escalated,
    NotRemediated,
    OneWorkflowPerIncident,
    TestbedOverrides,
    applicable_experiments,
    parse_experiment,
)
from chaos.hypotheses import Observations, evaluate, verdict_ok
from chaos.journal import Journal
from chaos.ledger import Ledger
from chaos.recovery_watch import outcome_reached
from common.errors import InvalidSetting
from ratequeue.config import ServiceSettings
from ratequeue.sentinel_topology import parse_sentinel_addresses
from ratequeue.topology import NodeRef, Shard, Topology
from tests.e2e.support import REPO, chaos_command

KILL_PRIMARY = "{action: kill, target: {role: primary}}"


def experiment(step: str = KILL_PRIMARY, **top: str) -> str:
    lines = "".join(f"{key}: {value}\n" for key, value in top.items())
    return f"title: t\n{lines}method:\n  - {step}\nhypotheses:\n  - {{type: not_remediated}}\n"


def test_an_experiment_runs_under_lazarus_waiting_for_a_replica_unless_it_says_otherwise() -> None:
    parsed = parse_experiment(experiment(), "x")
    assert (parsed.failover, parsed.ack) == ("lazarus", "wait")


def test_the_run_s_options_override_the_file_s_manager_and_acknowledgement() -> None:
    text = experiment(failover="lazarus", ack="wait")
    parsed = parse_experiment(text, "x", TestbedOverrides(failover="sentinel", ack="async"))
    assert (parsed.failover, parsed.ack) == ("sentinel", "async")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (experiment(failover="zookeeper"), "failover"),
        (experiment(ack="sometimes"), "ack"),
        (experiment(ack="async"), "needs failover: sentinel"),
        (experiment(failover="sentinel", control="etcd"), "needs control: redis"),
        (experiment("{action: kill, target: {role: controller}}", failover="sentinel"),
         "starts no controller"),
        (experiment("{action: pause, target: {role: sensor}}", failover="sentinel"),
         "starts no sensor"),
        (experiment("{approve: failover}", failover="sentinel"), "runs no workflow"),
        (experiment("{action: kill, target: {role: primary}, when: workflow_running}",
                    failover="sentinel"), "runs no workflow"),
    ],
)  # fmt: skip
def test_what_sentinel_cannot_do_is_refused_naming_the_field(text: str, problem: str) -> None:
    with pytest.raises(ExperimentError, match=problem):
        parse_experiment(text, "x.yaml")


def test_an_override_is_checked_with_the_file() -> None:
    text = experiment("{action: kill, target: {role: controller}}")
    with pytest.raises(NotApplicable, match="starts no controller"):
        parse_experiment(text, "x.yaml", TestbedOverrides(failover="sentinel"))


def observations() -> Observations:
    shard = Shard(id="s0", slots=(0, 16383), epoch=1,
                  primary=NodeRef(name="p", host="127.0.0.1", port=7000))  # fmt: skip
    topology = Topology(epoch=1, shards=[shard])
    return Observations(ledger=Ledger(), shard="s0", faulted_shards={"s0"}, fault_at=0.0,
                        recovered_at=None, topology_before=topology, topology_after=topology,
                        primaries_answering={"s0": ["p"]})  # fmt: skip


LAZARUS_ONLY = [
    Escalated(type="escalated"),
    OneWorkflowPerIncident(type="one_workflow_per_incident"),
]


def test_under_sentinel_the_hypotheses_about_lazarus_decisions_are_skipped_with_the_reason() -> (
    None
):
    outcomes = evaluate([*LAZARUS_ONLY, NotRemediated(type="not_remediated")],
                        observations(), "sentinel")  # fmt: skip
    escalated, one_workflow, not_remediated = outcomes
    for skipped in (escalated, one_workflow):
        assert skipped.skipped and "sentinel" in skipped.skipped
        assert not skipped.ok  # nothing reads a skipped hypothesis as held
    assert not_remediated.judged and not_remediated.ok


def test_under_lazarus_the_same_hypotheses_are_judged() -> None:
    assert all(outcome.judged for outcome in evaluate(LAZARUS_ONLY, observations()))


def test_a_verdict_leaves_skipped_hypotheses_out_but_needs_one_judged() -> None:
    judged_ok = evaluate([NotRemediated(type="not_remediated")], observations())
    skipped = evaluate(LAZARUS_ONLY, observations(), "sentinel")
    assert verdict_ok(skipped + judged_ok)
    assert not verdict_ok(skipped)


def test_sentinel_addresses_are_host_port_pairs() -> None:
    assert parse_sentinel_addresses("127.0.0.1:26379, 127.0.0.1:26380") == [
        ("127.0.0.1", 26379),
        ("127.0.0.1", 26380),
    ]


@pytest.mark.parametrize("sentinels", [None, "", "127.0.0.1", "127.0.0.1:port", "h:0", "h:70000"])
def test_the_api_refuses_to_follow_sentinel_without_usable_addresses(sentinels: str | None) -> None:
    with pytest.raises(InvalidSetting, match="sentinels"):
        ServiceSettings.parse(
            control_url="redis://127.0.0.1:6379/0", topology_backend="sentinel", sentinels=sentinels
        )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"failover": "sentinel", "control": "etcd"}, "control redis"),
        ({"failover": "lazarus", "ack": "async"}, "needs failover sentinel"),
    ],
)
def test_a_testbed_sentinel_cannot_manage_is_refused_before_anything_starts(
    tmp_path: Path, options: dict, problem: str
) -> None:
    with pytest.raises(TestbedError, match=problem):
        testbed.up(tmp_path, **options)
    assert not (tmp_path / "redis").exists() and not (tmp_path / "testbed.json").exists()


def test_over_a_directory_sentinel_skips_the_files_that_need_controllers_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    (tmp_path / "kill.yaml").write_text(experiment())
    needs = tmp_path / "controller.yaml"
    needs.write_text(experiment("{action: kill, target: {role: controller}}"))
    runnable, skipped = applicable_experiments(
        sorted(tmp_path.glob("*.yaml")), TestbedOverrides(failover="sentinel")
    )
    assert [(p.name, e.failover) for p, e in runnable] == [("kill.yaml", "sentinel")]
    [(path, reason)] = skipped
    assert path == needs and "controller.yaml" in reason and "starts no controller" in reason


def test_a_file_wrong_on_its_own_is_refused_not_skipped(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(experiment("{action: kill, target: {role: controller}}", failover="sentinel"))
    with pytest.raises(ExperimentError, match="starts no controller") as refused:
        applicable_experiments([wrong], TestbedOverrides(failover="sentinel"))
    assert not isinstance(refused.value, NotApplicable)


def test_run_over_the_scenarios_under_sentinel_plans_the_others_and_says_what_it_skipped(
    tmp_path: Path,
) -> None:
    scenarios = sorted(str(p) for p in (REPO / "scenarios").glob("*.yaml"))
    ran = chaos_command("run", "--dry-run", "--failover", "sentinel", "--journal-dir",
                        str(tmp_path), *scenarios)  # fmt: skip
    # The console wraps lines anywhere and puts its log's source (`cli.py:N`) on wrapped lines.
    said = re.sub(r"cli\.py:\d+", "", "".join((ran.stdout + ran.stderr).split()))
    assert ran.returncode == 0, said
    assert "sensor_false_positive.yaml:failover:sentinelstartsnosensor" in said
    assert said.count("skipped") == 6  # controllers, a sensor, etcd four times
    assert "plan:t+" in said  # the others were planned


def test_run_refuses_when_the_options_leave_no_experiment_to_run(tmp_path: Path) -> None:
    only = tmp_path / "controller.yaml"
    only.write_text(experiment("{action: kill, target: {role: controller}}"))
    ran = chaos_command("run", "--dry-run", "--failover", "sentinel", str(only))
    assert ran.returncode == 2
    assert "none of the experiments can run" in " ".join(ran.stdout.split())


def test_under_sentinel_a_remediation_is_reached_once_the_api_routes_to_the_promoted_node() -> None:
    run = Journal(run_id="r", experiment="e", deployment="d", environment="dev",
                  failover="sentinel", ack="async", started_at=0.0)  # fmt: skip
    for mark in ("fault_injected", "promotion", "first_acknowledged_write"):
        run.mark(mark, 1.0, 1.0)
    assert not outcome_reached("remediation", run, [], [], {"s0"}, "sentinel")
    run.mark("topology_published", 2.0, 1.0, "s0: s0-replica1")
    assert outcome_reached("remediation", run, [], [], {"s0"}, "sentinel")


@pytest.mark.parametrize(("option", "value"), [("--failover", "sentinel"), ("--ack", "async"),
                                               ("--control", "etcd")])  # fmt: skip
def test_run_refuses_a_testbed_override_together_with_a_target(
    tmp_path: Path, option: str, value: str
) -> None:
    target = tmp_path / "target.yaml"
    target.write_text("name: staging\n")
    result = CliRunner().invoke(
        app,
        ["run", str(REPO / "scenarios" / "primary_kill.yaml"), "--target", str(target),
         option, value, "--dry-run", "--journal-dir", str(tmp_path)],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "applies to the embedded testbed only; with --target the target file says" in (
        result.output
    )
