"""One controller node's REST app served over real HTTP against a real redis-server control
store, with no rules and no service profiles: every event escalates unmatched, so nothing it is
sent makes it probe a host or act. For tests of the REST surface itself (hostile input, the
published contract). Not for: decisions, quorum or workflows (the testbed tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lazarus_lite.service import create_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.local_cluster import start_node
from tests.conftest import ServedApp


@contextmanager
def served_node(workdir: Path, token: str) -> Iterator[str]:
    """The node's base URL while it serves; its control store and server stop after."""
    control = start_node("control", "control", None, workdir)
    try:
        rules = workdir / "rules"
        rules.mkdir()
        settings = ControllerSettings(node_id="rest", control_url=control.url, api_token=token,
                                      rules=[rules], services=None, quorum=1)  # fmt: skip
        with ServedApp(create_app(settings)) as served:
            yield served.url
    finally:
        control.stop()
