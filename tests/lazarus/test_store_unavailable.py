"""A controller node whose coordination store stops answering: its API says so (503 with
`control_store_unavailable`, `/healthz` unhealthy) instead of failing with a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.redis_processes import RedisProcess
from lazarus_lite.service import create_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.local_cluster import start_node
from tests.conftest import ServedApp

pytestmark = pytest.mark.redis_control_store(
    "the control redis-server stopped under the node; etcd without its quorum is in "
    "tests/lazarus/test_store_outage.py"
)

TOKEN = "store-unavailable-token"


@pytest.fixture
def node_without_its_store(tmp_path: Path) -> Iterator[httpx.Client]:
    control: RedisProcess = start_node("control", "control", None, tmp_path)
    try:
        rules = tmp_path / "rules"
        rules.mkdir()
        settings = ControllerSettings(node_id="n1", control_url=control.url, api_token=TOKEN,
                                      rules=[rules], services=None, quorum=1)  # fmt: skip
        with ServedApp(create_app(settings)) as served:
            control.stop()
            with httpx.Client(base_url=served.url, timeout=10) as client:
                yield client
    finally:
        control.stop()


def test_healthz_reports_the_store_unhealthy(node_without_its_store: httpx.Client) -> None:
    answer = node_without_its_store.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["checks"] == [{"name": "control_store", "ok": False}]


def test_a_read_of_the_store_answers_503_naming_it(node_without_its_store: httpx.Client) -> None:
    answer = node_without_its_store.get("/v1/killswitch")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "control_store_unavailable"
