"""`chaos report` refuses a journal directory that is not there with a clear error, not a
traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from chaos.cli import app


def test_report_on_a_missing_directory_names_it_and_exits_non_zero(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    result = CliRunner().invoke(app, ["report", str(missing)], env={"COLUMNS": "400"})
    assert result.exit_code != 0
    assert "does not exist" in result.output and "nonexistent" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert not missing.exists()
