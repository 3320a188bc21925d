"""The controller node's HTTP API: event intake (`POST /v1/events` deposits into the stream),
the audit trail (`GET /v1/events`, `GET /v1/events/{id}`), workflows, and the peer endpoint the
coordinating node calls for the quorum (`POST /v1/quorum/evaluate`).

Errors are JSON `{"error": {"code", "message"}}`; bad input is a 4xx naming the field and
changes nothing, and no answer is a traceback (`common.http_contract` installs the handlers
and the body limits). The published OpenAPI declares each request body, the bearer token of the
mutating endpoints, and every status an operation answers. Not for: decisions (see
`controller`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from common.http_contract import (
    PROJECT_ERRORS,
    JsonBody,
    answers,
    credential,
    install_error_handlers,
    json_request_body,
    publish_contract,
    read_json_body,
    read_json_model,
    same_secret,
)
from common.validation import quoted
from detection.events import Event, InvalidEvent, parse_event
from detection.stream_factory import open_event_stream
from detection.streams import EventStream
from lazarus_lite.audit import AuditRecord, NodeVerdict
from lazarus_lite.controller import ControllerNode
from lazarus_lite.gates import ALL, CATEGORIES
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.shadow_report import shadow_report
from lazarus_lite.steps.approval import approve
from lazarus_lite.workflow.store import WorkflowStore
from ratequeue.errors import InvalidInput

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024
BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="the node's API token (`--api-token`)")  # fmt: skip


class ApiError(InvalidInput):
    """A refusal with its HTTP status and code (the error handlers answer it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, http_status=status)


class EvaluateRequest(JsonBody):
    event: dict[str, Any] = Field(json_schema_extra=Event.model_json_schema())
    rule: str


class ApproveRequest(JsonBody):
    step: str = Field(min_length=1, description="the gate's step name")


async def read_body(request: Request) -> Any:
    return await read_json_body(request, MAX_BODY_BYTES)


def open_stream(settings: ControllerSettings) -> EventStream:
    return open_event_stream(
        settings.stream,
        settings.control_url,
        kinesis_stream=settings.kinesis_stream,
        kinesis_region=settings.kinesis_region,
        kinesis_endpoint=settings.kinesis_endpoint,
    )


def require_token(request: Request, token: str) -> None:
    """Mutating endpoints need `Authorization: Bearer <token>`; anything else is a 401."""
    if not same_secret(credential(request, "bearer"), token):
        raise ApiError(401, "unauthorized", "a valid bearer token is required")


class SwitchRequest(JsonBody):
    enabled: bool
    category: str = "all"
    reason: str = ""
    by: str = ""


class ShadowRequest(JsonBody):
    enabled: bool
    service: str = "*"


# -- answers, as published -------------------------------------------------------------------


class Accepted(BaseModel):
    id: str
    position: str


class EventList(BaseModel):
    events: list[AuditRecord]


class Approved(BaseModel):
    workflow: str
    step: str
    approved: bool


class SwitchState(BaseModel):
    engaged: dict[str, dict[str, Any]]
    categories: list[str] | None = None


class ShadowState(BaseModel):
    services: list[str]


class ShadowDecisions(BaseModel):
    decisions: list[dict[str, Any]]


class BreakerState(BaseModel):
    region: str
    open: bool
    failing: list[str]
    threshold: int
    window_seconds: float


class Breakers(BaseModel):
    breakers: list[BreakerState]


class RateLimitState(BaseModel):
    service: str
    incidents: int
    limit: int
    suspended: bool
    window_seconds: float


class Health(BaseModel):
    node: str
    healthy: bool
    checks: list[dict[str, Any]]


def create_app(settings: ControllerSettings) -> FastAPI:
    control = aioredis.Redis.from_url(settings.control_url, socket_timeout=5)
    node = ControllerNode(settings, control=control, stream=open_stream(settings))
    workflows = WorkflowStore(control)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        yield
        await node.stop()
        await control.aclose()

    app = FastAPI(title=f"lazarus {settings.node_id}", version="1", lifespan=lifespan)
    app.state.node = node
    publish_contract(app)
    install_error_handlers(app)

    @app.exception_handler(RedisError)
    async def on_redis_error(request: Request, error: RedisError) -> JSONResponse:
        return PROJECT_ERRORS.response(503, "control_store_unavailable", str(error),
                                       headers={"Retry-After": "1"})  # fmt: skip

    def authorized(request: Request, _: object = Security(BEARER)) -> None:
        require_token(request, settings.api_token)

    def mutating(
        path: str,
        body: type[BaseModel] | dict[str, Any],
        success: dict[int, type[BaseModel] | None],
        *errors: int,
        status_code: int = 200,
    ) -> Callable[[Callable], Callable]:
        """A POST behind the token (a dependency: checked before anything else), with its body
        and its answers: 400, 401, 413 and 503 besides `errors`."""
        return app.post(path, status_code=status_code, response_model=None,
                        dependencies=[Depends(authorized)], openapi_extra=json_request_body(body),
                        responses=answers(success, 400, 401, 413, 503, *errors))  # fmt: skip

    @mutating("/v1/events", Event, {202: Accepted}, status_code=202)
    async def post_event(request: Request) -> JSONResponse:
        try:
            event = parse_event(await read_body(request))
        except InvalidEvent as error:
            raise ApiError(400, "invalid_event", error.reason) from None
        position = await node.submit(event)
        return JSONResponse({"id": event.id, "position": position}, status_code=202)

    @app.get("/v1/events", response_model=None, responses=answers({200: EventList}, 400, 503))
    async def list_events(
        service: str | None = None,
        # NaN or infinity would reach the control store, which refuses them (a 503 before).
        since: float | None = Query(None, allow_inf_nan=False, description="Unix time"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict:
        records = await node.audit.list(service=service, since=since, limit=limit)
        return {"events": [json.loads(r.model_dump_json()) for r in records]}

    @app.get(
        "/v1/events/{event_id}",
        response_model=None,
        responses=answers({200: AuditRecord}, 404, 503),
    )
    async def get_event(event_id: str) -> dict:
        record = await node.audit.get(event_id)
        if record is None:
            raise ApiError(404, "not_found", f"no event {quoted(event_id)} in the audit trail")
        answer = json.loads(record.model_dump_json())
        if record.workflow_id:
            answer["workflow"] = await _workflow(record.workflow_id)
        return answer

    async def _workflow(workflow_id: str) -> dict | None:
        found = await workflows.load(workflow_id)
        if found is None:
            return None
        answer = json.loads(found.model_dump_json())
        answer["history"] = await workflows.history(workflow_id)
        return answer

    @app.get(
        "/v1/workflows/{workflow_id}",
        response_model=None,
        responses=answers({200: None}, 404, 503),
    )
    async def get_workflow(workflow_id: str) -> dict:
        found = await _workflow(workflow_id)
        if found is None:
            raise ApiError(404, "not_found", f"no workflow {quoted(workflow_id)}")
        return found

    @mutating("/v1/workflows/{workflow_id}/approve", ApproveRequest, {200: Approved}, 404)
    async def approve_step(workflow_id: str, request: Request) -> dict:
        step_name = (await read_json_model(request, ApproveRequest, MAX_BODY_BYTES)).step
        found = await workflows.load(workflow_id)
        if found is None:
            raise ApiError(404, "not_found", f"no workflow {quoted(workflow_id)}")
        if step_name not in found.steps:
            problem = f"field 'step': {quoted(workflow_id)} has no step {quoted(step_name)}"
            raise ApiError(400, "invalid_request", problem)
        await approve(control, workflow_id, step_name)
        return {"workflow": workflow_id, "step": step_name, "approved": True}

    @mutating("/v1/quorum/evaluate", EvaluateRequest, {200: NodeVerdict}, 404)
    async def evaluate(request: Request) -> dict:
        payload = await read_json_model(request, EvaluateRequest, MAX_BODY_BYTES)
        try:
            event = parse_event(payload.event)
        except InvalidEvent as error:
            raise ApiError(400, "invalid_event", f"field 'event': {error.reason}") from None
        try:
            rule = node.rules.get(payload.rule)
        except KeyError:
            raise ApiError(404, "unknown_rule",
                           f"this node has no rule {quoted(payload.rule)}") from None  # fmt: skip
        verdict = await node.evaluate(event, rule)
        return json.loads(verdict.model_dump_json())

    @app.get("/v1/killswitch", response_model=None, responses=answers({200: SwitchState}, 503))
    async def killswitch_status() -> dict:
        return {"engaged": await node.kill_switch.status(), "categories": [*CATEGORIES, "all"]}

    @mutating("/v1/killswitch", _switch_schema(), {200: SwitchState})
    async def killswitch_set(request: Request) -> dict:
        change = await read_json_model(request, SwitchRequest, MAX_BODY_BYTES)
        if change.category not in (*CATEGORIES, "all"):
            raise ApiError(
                400, "invalid_request", f"field 'category': expected one of {[*CATEGORIES, 'all']}"
            )
        category = ALL if change.category == "all" else change.category
        await node.kill_switch.set(category, change.enabled, by=change.by, reason=change.reason)
        return {"engaged": await node.kill_switch.status()}

    @app.get("/v1/shadow", response_model=None, responses=answers({200: ShadowState}, 503))
    async def shadow_status() -> dict:
        return {"services": await node.shadow.services()}

    @mutating("/v1/shadow", ShadowRequest, {200: ShadowState})
    async def shadow_set(request: Request) -> dict:
        change = await read_json_model(request, ShadowRequest, MAX_BODY_BYTES)
        await node.shadow.set(change.service, change.enabled)
        return {"services": await node.shadow.services()}

    @app.get(
        "/v1/shadow-report", response_model=None, responses=answers({200: ShadowDecisions}, 503)
    )
    async def get_shadow_report() -> dict:
        return {"decisions": await shadow_report(control)}

    @app.get("/v1/breaker", response_model=None, responses=answers({200: Breakers}, 503))
    async def breaker_status(region: str | None = None) -> dict:
        regions = [region] if region else await node.breaker.regions()
        return {"breakers": [await node.breaker.state(r) for r in regions]}

    @app.get(
        "/v1/rate-limits/{service}",
        response_model=None,
        responses=answers({200: RateLimitState}, 503),
    )
    async def rate_limit_status(service: str) -> dict:
        now = time.time()
        key = node.rate_limit.key(service)
        count = await control.zcount(key, now - node.rate_limit.window, "+inf")
        limit = node.rate_limit.overrides.get(service, node.rate_limit.threshold)
        return {
            "service": service,
            "incidents": count,
            "limit": limit,
            "suspended": count > limit,
            "window_seconds": node.rate_limit.window,
        }

    @app.get(
        "/healthz",
        response_model=None,
        responses={200: {"model": Health, "description": "the control store answers"},
                   503: {"model": Health, "description": "the control store does not"}},
    )  # fmt: skip
    async def healthz() -> JSONResponse:
        try:
            ok = bool(await control.ping())
        except RedisError:
            ok = False
        checks = [{"name": "control_store", "ok": ok}]
        return JSONResponse(
            {"node": settings.node_id, "healthy": ok, "checks": checks},
            status_code=200 if ok else 503,
        )

    return app


def _switch_schema() -> dict[str, Any]:
    """The kill switch body as published: `category` names one of the categories."""
    schema = SwitchRequest.model_json_schema()
    schema["properties"]["category"]["enum"] = [*CATEGORIES, "all"]
    return schema
