"""Every command line answers `--version` with the one version the package metadata gives."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from chaos.cli import app as chaos_app
from detection.cli import app as detection_app
from lazarus_lite.cli import app as lazarus_app
from ratequeue.cli import app as ratequeue_app


@pytest.mark.parametrize(
    ("app", "program"),
    [(chaos_app, "ratequeue-chaos"), (lazarus_app, "lazarus"), (ratequeue_app, "ratequeue"),
     (detection_app, "detection")],
)  # fmt: skip
def test_version_prints_the_package_metadata_version_and_exits_0(
    app: typer.Typer, program: str
) -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"{program} {version('ratequeue-testbed')}\n"
