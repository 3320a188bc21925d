"""`ratequeue topology-init` under `--topology-backend sentinel`: refused by name, since the first
map goes to the control store and Sentinel never writes a map.

Not for: reading the map Sentinel's primaries make (tests/test_sentinel_topology_source.py).
"""

from __future__ import annotations

from typer.testing import CliRunner

from ratequeue.cli import app


def test_topology_init_refuses_the_sentinel_backend_naming_it() -> None:
    result = CliRunner().invoke(app, [
        "topology-init", "--control", "redis://127.0.0.1:1/0", "--topology-backend", "sentinel",
        "--sentinels", "127.0.0.1:26379", "--shard", "s0=127.0.0.1:7000",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "setting 'topology_backend': sentinel is refused" in result.output
    assert "--topology-backend redis" in result.output
