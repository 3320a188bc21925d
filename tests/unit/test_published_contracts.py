"""The OpenAPI each service publishes (queue API, controller REST, fault agent) describes what
its handlers really take and answer: every body a handler reads is declared, every operation
that reads one declares the 400 and the 413 it answers, and none declares FastAPI's default 422
(these services answer 400 in their own envelope). Built from the apps without serving them.

Not for: whether the services keep these contracts (tests/test_fuzz_published_schemas.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from chaos.agent.app import create_app as create_agent_app
from chaos.agent.state import Agent
from chaos.agent.targets import TargetSource
from lazarus_lite.service import create_app as create_controller_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.config import ServiceSettings
from ratequeue.service import create_app as create_queue_app

UNREACHABLE = "redis://127.0.0.1:1/0"  # the apps are only built, never started


def queue_app(tmp_path: Path) -> FastAPI:
    return create_queue_app(ServiceSettings(control_url=UNREACHABLE))


def controller_app(tmp_path: Path) -> FastAPI:
    settings = ControllerSettings(node_id="n", control_url=UNREACHABLE, api_token="t" * 16,
                                  rules=[tmp_path], services=None)  # fmt: skip
    return create_controller_app(settings)


def agent_app(tmp_path: Path) -> FastAPI:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets: []\n")
    return create_agent_app(Agent(api_key="k", allow=set(), targets=TargetSource(targets)))


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation)
            for path, item in app.openapi()["paths"].items()
            for method, operation in item.items()]  # fmt: skip


APPS = pytest.mark.parametrize("build", [queue_app, controller_app, agent_app])


@APPS
def test_every_post_and_put_declares_its_json_body(build: Any, tmp_path: Path) -> None:
    for method, path, operation in operations(build(tmp_path)):
        if method in ("POST", "PUT"):
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            assert body and body["schema"].get("type") == "object", (method, path)


@APPS
def test_every_operation_reading_a_body_declares_its_400_and_413(
    build: Any, tmp_path: Path
) -> None:
    for method, path, operation in operations(build(tmp_path)):
        if "requestBody" in operation:
            assert {"400", "413"} <= set(operation["responses"]), (method, path)


@APPS
def test_no_operation_declares_fastapis_default_422(build: Any, tmp_path: Path) -> None:
    # A 422 a handler really answers (an event dated ahead) is declared in the envelope.
    app = build(tmp_path)
    for method, path, operation in operations(app):
        answer = operation["responses"].get("422", {}).get("content", {})
        schema = answer.get("application/json", {}).get("schema", {})
        assert not schema.get("$ref", "").endswith("/HTTPValidationError"), (method, path)
    assert "HTTPValidationError" not in app.openapi()["components"]["schemas"]


@APPS
def test_every_declared_error_is_the_services_json_envelope(build: Any, tmp_path: Path) -> None:
    for method, path, operation in operations(build(tmp_path)):
        for status, answer in operation["responses"].items():
            if status.startswith("4"):
                assert set(answer["content"]) == {"application/json"}, (method, path, status)


def test_the_dequeue_answer_requires_each_messages_lease_time_as_a_date_time(
    tmp_path: Path,
) -> None:
    spec = queue_app(tmp_path).openapi()
    answer = spec["paths"]["/v1/messages:dequeue"]["post"]["responses"]["200"]
    dequeued = _resolve(spec, answer["content"]["application/json"]["schema"])
    leased = _resolve(spec, dequeued["properties"]["messages"]["items"])
    assert leased["properties"]["leased_at"] == {
        "type": "string", "format": "date-time", "title": "Leased At"
    }  # fmt: skip
    assert {"id", "number", "body", "receipt", "attempt", "leased_at"} <= set(leased["required"])


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a `$ref` points at in the spec's components (or `schema` itself)."""
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema
