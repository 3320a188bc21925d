"""The failover benchmark's command line (benchmarks/failover_recovery.py): its options are
checked before anything is started. Not for the measurements (those are the benchmark's own)."""

from __future__ import annotations

from typer.testing import CliRunner

from benchmarks.failover_recovery import app


def test_a_fault_other_than_kill_pause_or_partition_is_refused_naming_the_choices() -> None:
    result = CliRunner().invoke(app, ["--fault", "stall"])
    assert result.exit_code == 2
    assert "--fault" in result.output
    assert all(f"'{name}'" in result.output for name in ("kill", "pause", "partition"))
