"""What the queue API answers a single enqueue refused after its message was read: every 503
names the message's id, made up when the producer gave none, because the message may be
queued already and only a retry with that id cannot queue it twice. The app in-process, its
group commit stood in for (no shard answers here).

Not for: the same answers from real shards (tests/test_http_batch.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from redis.exceptions import ResponseError

from ratequeue.coalescing import EnqueueCoalescer
from ratequeue.errors import DurabilityNotMet, EnqueueBacklogFull, QueueFull
from ratequeue.service import create_app
from ratequeue.shard import OutgoingMessage
from tests.unit.test_direct_routes import SETTINGS

ENQUEUE = "/v1/numbers/+14155550100/messages"


def app_answering(outcome: Exception, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    async def enqueue(self: EnqueueCoalescer, message: OutgoingMessage) -> Exception:
        return outcome

    monkeypatch.setattr(EnqueueCoalescer, "enqueue", enqueue)
    return TestClient(create_app(SETTINGS), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(EnqueueBacklogFull("the backlog is full"), "enqueue_backlog_full"),
     (DurabilityNotMet("0 of 1 replicas"), "durability_not_met"),
     (ResponseError("CORRUPTKEY rq:barrier"), "backend_unavailable")],
    ids=["backlog-full", "not-confirmed", "redis-error"],
)  # fmt: skip
def test_a_503_to_a_message_without_an_id_names_the_id_made_up_for_it(
    outcome: Exception, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = app_answering(outcome, monkeypatch).post(ENQUEUE, json={"body": "x"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, code)
    assert len(answer.json()["id"]) >= 16 and int(answer.headers["retry-after"]) >= 1


def test_a_503_to_a_message_with_an_id_names_that_id(monkeypatch: pytest.MonkeyPatch) -> None:
    app = app_answering(DurabilityNotMet("0 of 1 replicas"), monkeypatch)
    answer = app.post(ENQUEUE, json={"id": "order-7", "body": "x"})
    assert answer.json()["id"] == "order-7"


def test_a_refusal_that_wrote_nothing_names_no_id(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = app_answering(QueueFull("10 hours queued"), monkeypatch).post(
        ENQUEUE, json={"body": "x"}
    )
    assert answer.status_code == 429 and "id" not in answer.json()
