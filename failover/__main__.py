"""`python -m failover`: the same command line as the `failover` console script."""

from failover.cli import app

app(prog_name="failover")
