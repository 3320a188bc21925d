"""A controller node's GET /metrics over real HTTP (a real redis-server control store), scraped
and read with prometheus_client's own text parser: decisions by outcome and the escalations the
node published."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.lazarus.served_node import post_unmatched_event, served_node
from tests.prometheus_samples import Samples, metric_samples

TOKEN = f"metrics-token-{uuid.uuid4().hex}"
ESCALATED = ("lazarus_decisions_total", (("outcome", "escalated"),))


def scraped(url: str) -> Samples:
    """Every sample of the node's /metrics, by name and labels."""
    answer = httpx.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return metric_samples(answer.text)


def test_an_escalated_event_counts_as_a_decision_and_a_published_escalation(
    tmp_path: Path,
) -> None:
    with served_node(tmp_path, TOKEN) as url:
        before = scraped(url)
        assert before[ESCALATED] == 0
        post_unmatched_event(url, TOKEN)
        after = scraped(url)
    assert after[ESCALATED] == 1
    assert after[("lazarus_escalations_published_total", ())] == 1
    assert after[("lazarus_workflow_outcomes_total", (("outcome", "remediated"),))] == 0


# What Prometheus 2.5+/3 sends a target: OpenMetrics first, the text format as a fallback.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # fmt: skip


def test_a_scraper_asking_for_openmetrics_gets_it_and_anything_else_the_text_format(
    tmp_path: Path,
) -> None:
    with served_node(tmp_path, TOKEN) as url:
        plain = httpx.get(f"{url}/metrics", timeout=10)
        openmetrics = httpx.get(f"{url}/metrics", headers={"accept": PROMETHEUS_ACCEPT},
                                timeout=10)  # fmt: skip
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name for f in openmetrics_families(openmetrics.text)}
    assert "lazarus_decisions" in families and openmetrics.text.endswith("# EOF\n")
