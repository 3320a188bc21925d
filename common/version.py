"""The testbed's one version, read from the installed package's metadata, and the `--version`
option every command line (ratequeue-chaos, lazarus, ratequeue, detection) shares.

Not for: the Nagios plugin's `-V` (`detection check` answers it itself, exiting UNKNOWN as the
plugin guidelines ask) or any version negotiation between services.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version

import typer

DISTRIBUTION = "ratequeue-testbed"


def testbed_version() -> str:
    """The version pyproject.toml gives, as installed; "unknown" when run from a checkout that
    was never installed."""
    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def add_version_option(app: typer.Typer, program: str) -> None:
    """Give `app` a `--version` option that prints `PROGRAM VERSION` and exits 0."""

    def show_version(wanted: bool) -> None:
        if wanted:
            typer.echo(f"{program} {testbed_version()}")
            raise typer.Exit(0)

    @app.callback()
    def _options(
        version: bool = typer.Option(
            False,
            "--version",
            callback=show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ) -> None:
        pass
