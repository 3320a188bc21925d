"""`python -m detection`: the same command line as the `detection` console script."""

from detection.cli import app

app(prog_name="detection")
