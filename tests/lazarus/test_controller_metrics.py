"""A controller node's GET /metrics over real HTTP (a real redis-server control store), scraped
and read with prometheus_client's own text parser: decisions by outcome and the escalations the
node published."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

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
