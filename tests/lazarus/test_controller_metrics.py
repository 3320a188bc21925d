"""A controller node's GET /metrics over real HTTP (a real redis-server control store), scraped
and read with prometheus_client's own text parser: decisions by outcome and the escalations the
node published."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from detection.events import new_event
from tests.lazarus.served_node import served_node
from tests.prometheus_samples import Samples, metric_samples

TOKEN = f"metrics-token-{uuid.uuid4().hex}"


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
        assert before[("lazarus_decisions_total", (("outcome", "escalated"),))] == 0
        event = new_event("HealthcheckDown", environment="dev", region="local",
                          service="billing", host="10.0.0.9", source="nagios")  # fmt: skip
        posted = httpx.post(f"{url}/v1/events", json=event.model_dump(mode="json"),
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)  # fmt: skip
        assert posted.status_code == 202, posted.text
        deadline = time.monotonic() + 30
        while scraped(url)[("lazarus_decisions_total", (("outcome", "escalated"),))] < 1:
            assert time.monotonic() < deadline, "the event was never decided"
            time.sleep(0.1)
        after = scraped(url)
    assert after[("lazarus_escalations_published_total", ())] == 1
    assert after[("lazarus_decisions_total", (("outcome", "remediated"),))] == 0
