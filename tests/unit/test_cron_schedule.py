"""Cron expressions for `chaos run --cron`: five fields read in UTC, the next time after a given
one, and a mistake refused naming the field."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chaos.cli import app
from chaos.cron_schedule import CronSchedule

MIDNIGHT = 1_796_256_000.0  # 2026-12-03T00:00:00Z (a Thursday)
HOUR = 3600.0


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [("0 */4 * * *", MIDNIGHT, MIDNIGHT + 4 * HOUR),
     ("0 */4 * * *", MIDNIGHT - 1, MIDNIGHT),
     ("30 2 * * *", MIDNIGHT, MIDNIGHT + 2.5 * HOUR),
     ("0 9 * * mon-fri", MIDNIGHT + 10 * HOUR, MIDNIGHT + 24 * HOUR + 9 * HOUR)],
)  # fmt: skip
def test_the_next_time_is_the_first_the_expression_names_after_the_given_one_in_utc(
    expression: str, after: float, expected: float
) -> None:
    assert CronSchedule(expression).next_after(after) == expected


@pytest.mark.parametrize(
    ("expression", "named"),
    [("61 * * * *", "field 1 (minute) '61'"), ("0 25 * * *", "field 2 (hour) '25'"),
     ("0 0 32 * *", "field 3 (day of month) '32'"), ("0 0 * 13 *", "field 4 (month) '13'"),
     ("0 0 * * funday", "field 5 (day of week) 'funday'"),
     ("*/5 * * *", "has 4 field(s); a cron expression has 5"),
     ("0 0 30 2 *", "names no time that ever comes")],
)  # fmt: skip
def test_a_bad_expression_is_refused_naming_the_field(expression: str, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
        CronSchedule(expression)


def test_chaos_run_refuses_a_bad_cron_naming_the_option_and_the_field() -> None:
    result = CliRunner().invoke(
        app, ["run", "scenarios/replica_kill.yaml", "--cron", "0 25 * * *", "--dry-run"],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "refusing to start: setting 'cron' (--cron): field 2 (hour) '25'" in result.output


def test_chaos_run_refuses_every_and_cron_together() -> None:
    result = CliRunner().invoke(
        app, ["run", "scenarios/replica_kill.yaml", "--cron", "0 * * * *", "--every", "1h"],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "setting 'cron' (--cron): give --every or --cron, not both" in result.output
