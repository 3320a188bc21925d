"""The queue API's `GET /metrics` in the format the scraper's Accept header asks for, as
Prometheus' content negotiation has it: OpenMetrics to a Prometheus that asks for it (read back
with prometheus-client's OpenMetrics parser), the text format 0.0.4 to anything else. The app
in-process (no shard answers: its own metrics are still served).

Not for: what the metrics count (tests/test_http_api.py; the controller node's in
tests/lazarus/test_controller_metrics.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from ratequeue.service import create_app
from tests.lazarus.test_controller_metrics import PROMETHEUS_ACCEPT
from tests.unit.test_direct_routes import SETTINGS


@pytest.fixture
def api() -> TestClient:
    return TestClient(create_app(SETTINGS))


def test_a_prometheus_asking_for_openmetrics_gets_openmetrics(api: TestClient) -> None:
    answer = api.get("/metrics", headers={"accept": PROMETHEUS_ACCEPT})
    assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    families = {family.name for family in text_string_to_metric_families(answer.text)}
    assert "ratequeue_request_seconds" in families


def test_a_version_given_in_quotes_is_read_as_without_them(api: TestClient) -> None:
    accept = 'application/openmetrics-text; version="1.0.0"'
    answer = api.get("/metrics", headers={"accept": accept})
    assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")


@pytest.mark.parametrize(
    "accept",
    ["", "*/*", "text/plain",
     "application/openmetrics-text;version=1.0.0;q=0, text/plain",  # q=0: not acceptable
     "application/openmetrics-text; version=1.0.0-rc1"],  # a version it cannot compare
)  # fmt: skip
def test_a_scraper_asking_for_no_format_it_can_have_gets_the_text_format_0_0_4(
    api: TestClient, accept: str
) -> None:
    answer = api.get("/metrics", headers={"accept": accept})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
