"""The chaos harness reads the controllers' answers through lazarus_lite's models; an answer
that does not read (controllers of another version) is named in the run's errors, never
silently taken for "nothing happened"."""

from __future__ import annotations

from typing import Any

import httpx

from chaos.controller_answers import ControllerAnswers


class OneController:
    def controller_urls(self) -> list[str]:
        return ["http://controller"]


def answering(events: list[dict[str, Any]], workflow: dict[str, Any]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            return httpx.Response(200, json={"events": events})
        return httpx.Response(200, json=workflow)

    return httpx.Client(transport=httpx.MockTransport(handle))


def audit_record(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event": {"shard": "s0"}, "service": "ratequeue",
            "received_at": 1.0, "coordinator": "n1", **fields}  # fmt: skip


def test_an_audit_record_that_does_not_read_is_named_and_the_others_are_kept() -> None:
    said: list[str] = []
    answers = ControllerAnswers(
        OneController(),  # type: ignore[arg-type]
        answering([audit_record("e1"), audit_record("e2", received_at="yesterday")], {}),
        said.append,
    )
    decisions, workflows = answers.decisions(0.0, {"s0"})
    assert [d.event_id for d in decisions] == ["e1"] and workflows == []
    assert len(answers.unreadable) == 1 and "does not read as AuditRecord" in said[0]


def test_a_workflow_that_does_not_read_is_named_not_dropped_silently() -> None:
    said: list[str] = []
    answers = ControllerAnswers(
        OneController(),  # type: ignore[arg-type]
        answering([audit_record("e1", workflow_id="wf-1")], {"id": "wf-1"}),
        said.append,
    )
    decisions, workflows = answers.decisions(0.0, {"s0"})
    assert [d.workflow_id for d in decisions] == ["wf-1"] and workflows == []
    assert any("workflow wf-1 does not read as WorkflowRecord" in p for p in answers.unreadable)
