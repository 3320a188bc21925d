"""Rules: the seed's YAML shape, strict loading, matching with alternatives and event data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from detection.events import new_event
from lazarus_lite.checks import CHECKS
from lazarus_lite.cli import app
from lazarus_lite.errors import RuleError
from lazarus_lite.rules import load_rules, parse_rules
from lazarus_lite.settings import DEFINITIONS

ACTIONS = ["ratequeue.failover", "default.record"]

SEED_SHAPE = """
name: ratequeue_master_down
criteria:
  environment: dev|stage|prod
  event_type: RedisMasterDown
  event_data: {master_link_status: down}
checks:
  - checkName: MasterDown
  - checkName: MinActiveHosts
    default: 2
lock: shard
action:
  name: ratequeue.failover
  inputs: {notification_group: ratequeue-oncall}
"""


def parse(text: str) -> list:
    return parse_rules(text, "rules.yaml", known_checks=CHECKS, known_actions=ACTIONS)


def master_down(**overrides: object) -> object:
    fields: dict = {"environment": "stage", "region": "local", "service": "ratequeue",
                    "host": "127.0.0.1:7000", "source": "sensor-1", "shard": "s0",
                    "data": {"master_link_status": "down"}}  # fmt: skip
    fields.update(overrides)
    return new_event("RedisMasterDown", **fields)


def test_a_rule_in_the_seed_shape_loads_with_its_checks_lock_and_action() -> None:
    (rule,) = parse(SEED_SHAPE)
    assert [c.check_name for c in rule.checks] == ["MasterDown", "MinActiveHosts"]
    assert rule.checks[1].default == 2
    assert rule.lock == "shard"
    assert rule.action.inputs == {"notification_group": "ratequeue-oncall"}


def test_criteria_alternatives_and_event_data_decide_the_match() -> None:
    (rule,) = parse(SEED_SHAPE)
    assert rule.matches(master_down())
    assert not rule.matches(master_down(environment="qa"))
    assert not rule.matches(master_down(data={"master_link_status": "up"}))
    assert not rule.matches(master_down(data={}))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("checkName: MasterDown", "checkName: MasterIsDown"), "unknown check 'MasterIsDown'"),
        (("name: ratequeue.failover", "name: ratequeue.failback"), "unknown action"),
        (("lock: shard", "lock: shard\ncolour: blue"), "colour"),
        (("lock: shard", "lock: region"), "field 'lock'"),
        (("event_type: RedisMasterDown", "event_type: RedisMasterGone"), "unknown event type"),
    ],
)
def test_a_mistake_is_refused_naming_the_file_the_rule_and_what_is_wrong(
    change: tuple[str, str], named: str
) -> None:
    with pytest.raises(RuleError) as refused:
        parse(SEED_SHAPE.replace(*change))
    assert "rules.yaml: rule ratequeue_master_down" in str(refused.value)
    assert named in str(refused.value)


def test_the_first_matching_rule_wins_and_no_match_is_none(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SEED_SHAPE)
    (tmp_path / "b.yaml").write_text(SEED_SHAPE.replace("ratequeue_master_down", "second"))
    book = load_rules([tmp_path], known_checks=CHECKS, known_actions=ACTIONS)
    assert book.match(master_down()).name == "ratequeue_master_down"
    assert book.match(master_down(environment="qa")) is None


def test_the_shipped_rules_validate_from_the_command_line() -> None:
    result = CliRunner().invoke(app, ["rules", "validate", str(DEFINITIONS / "rules")])
    assert result.exit_code == 0, result.output
    assert "ok: ratequeue_master_down" in result.output


def test_rules_validate_refuses_a_second_checks_key_that_would_drop_the_checks(
    tmp_path: Path,
) -> None:
    shipped = (DEFINITIONS / "rules" / "ratequeue.yaml").read_text()
    lines = shipped.splitlines(keepends=True)
    lock = lines.index("lock: shard\n")  # the failover rule's, after its checks
    bad = tmp_path / "ratequeue.yaml"
    bad.write_text("".join([*lines[:lock], "checks: []\n", *lines[lock:]]))
    result = CliRunner().invoke(app, ["rules", "validate", str(bad)])
    assert result.exit_code == 1, result.output
    output = "".join(result.output.split())  # rich wraps long lines at any column
    first = lines.index("checks:\n") + 1
    assert f"line{lock + 1},column1:duplicatekey'checks'(firstonline{first})" in output
    assert "ok:" not in output


def test_rules_validate_exits_non_zero_naming_the_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED_SHAPE.replace("checkName: MasterDown", "checkName: MasterIsDown"))
    result = CliRunner().invoke(app, ["rules", "validate", str(bad)])
    assert result.exit_code == 1
    assert "unknown check 'MasterIsDown'" in result.output
