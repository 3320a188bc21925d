"""One controller node's REST app served over real HTTP against a real coordination store (the
suite's, `tests/suite_control.py`: a redis-server control store, or three etcd members beside
it), with no rules and no service profiles: every event escalates unmatched, so nothing it is
sent makes it probe a host or act. For tests of the REST surface itself (hostile input, the
published contract). Not for: decisions, quorum or workflows (the testbed tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.etcd_processes import start_etcd_cluster
from detection.events import new_event
from lazarus_lite.service import create_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.local_cluster import start_node
from tests.conftest import ServedApp
from tests.suite_control import suite_control


@contextmanager
def served_node(workdir: Path, token: str) -> Iterator[str]:
    """The node's base URL while it serves; its control store and server stop after."""
    with served_node_and_control(workdir, token) as (url, _):
        yield url


@contextmanager
def served_node_and_control(workdir: Path, token: str) -> Iterator[tuple[str, str]]:
    """`served_node`, with its control store's URL (where its event stream is)."""
    control = start_node("control", "control", None, workdir)
    etcd = start_etcd_cluster(workdir / "etcd") if suite_control() == "etcd" else None
    try:
        rules = workdir / "rules"
        rules.mkdir()
        store: dict[str, object] = {}
        if etcd is not None:
            store = {"coordination_backend": "etcd", "etcd_endpoints": ",".join(etcd.endpoints)}
        settings = ControllerSettings(node_id="rest", control_url=control.url, api_token=token,
                                      rules=[rules], services=None, quorum=1,
                                      **store)  # type: ignore[arg-type]  # fmt: skip
        with ServedApp(create_app(settings)) as served:
            yield served.url, control.url
    finally:
        if etcd is not None:
            etcd.stop()
        control.stop()


def post_unmatched_event(url: str, token: str) -> str:
    """Send the node an event no rule matches (so it is escalated) and wait until its decision
    is in the audit trail; returns the event's id."""
    event = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios")  # fmt: skip
    posted = httpx.post(f"{url}/v1/events", json=event.model_dump(mode="json"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert posted.status_code == 202, posted.text
    wait_for_decision(url, event.id)
    return event.id


def wait_for_decision(url: str, event_id: str, timeout: float = 30) -> dict:
    """The event's audit record once it is decided (fails the test after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while (record := httpx.get(f"{url}/v1/events/{event_id}", timeout=10).json()).get(
        "outcome"
    ) in (None, "received"):
        assert time.monotonic() < deadline, f"event {event_id} was never decided"
        time.sleep(0.1)
    return record
