"""`lazarus_lite` command line (filled in by the failover issue)."""

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def main() -> None:
    """Not implemented yet: see the failover issue."""
