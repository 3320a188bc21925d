"""The controller node's HTTP API: event intake (`POST /v1/events` deposits into the stream),
the audit trail (`GET /v1/events`, `GET /v1/events/{id}`), workflows, and the peer endpoint the
coordinating node calls for the quorum (`POST /v1/quorum/evaluate`).

Errors are JSON `{"error": {"code", "message"}}`; bad input is a 4xx naming the field and
changes nothing. Not for: decisions (see `controller`).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from failover.events import InvalidEvent, parse_event
from failover.stream_factory import open_event_stream
from failover.streams import EventStream
from lazarus_lite.approval_steps import approve
from lazarus_lite.controller import ControllerNode
from lazarus_lite.gates import ALL, CATEGORIES
from lazarus_lite.settings import ControllerSettings
from lazarus_lite.shadow_report import shadow_report
from lazarus_lite.workflow import WorkflowStore
from ratequeue.validation import describe_problems

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any]
    rule: str


async def read_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {error}") from None


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
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
        raise ApiError(401, "unauthorized", "a valid bearer token is required")


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    category: str = "all"
    reason: str = ""
    by: str = ""


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool
    service: str = "*"


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

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": error.code, "message": error.message}}, status_code=error.status
        )

    @app.exception_handler(RedisError)
    async def on_redis_error(request: Request, error: RedisError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "control_store_unavailable", "message": str(error)}},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error"}}, status_code=500
        )

    def authorized(request: Request) -> None:
        require_token(request, settings.api_token)

    @app.post("/v1/events", status_code=202)
    async def post_event(request: Request) -> JSONResponse:
        authorized(request)
        try:
            event = parse_event(await read_body(request))
        except InvalidEvent as error:
            raise ApiError(400, "invalid_event", error.reason) from None
        position = await node.submit(event)
        return JSONResponse({"id": event.id, "position": position}, status_code=202)

    @app.get("/v1/events")
    async def list_events(
        service: str | None = None, since: float | None = None, limit: int = 100
    ) -> dict:
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_request", "query 'limit': must be 1-1000")
        records = await node.audit.list(service=service, since=since, limit=limit)
        return {"events": [json.loads(r.model_dump_json()) for r in records]}

    @app.get("/v1/events/{event_id}")
    async def get_event(event_id: str) -> dict:
        record = await node.audit.get(event_id)
        if record is None:
            raise ApiError(404, "not_found", f"no event {event_id} in the audit trail")
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

    @app.get("/v1/workflows/{workflow_id}")
    async def get_workflow(workflow_id: str) -> dict:
        found = await _workflow(workflow_id)
        if found is None:
            raise ApiError(404, "not_found", f"no workflow {workflow_id}")
        return found

    @app.post("/v1/workflows/{workflow_id}/approve")
    async def approve_step(workflow_id: str, request: Request) -> dict:
        authorized(request)
        body = await read_body(request)
        step_name = body.get("step") if isinstance(body, dict) else None
        if not isinstance(step_name, str) or not step_name:
            raise ApiError(400, "invalid_request", "field 'step': expected the gate's step name")
        found = await workflows.load(workflow_id)
        if found is None:
            raise ApiError(404, "not_found", f"no workflow {workflow_id}")
        if step_name not in found.steps:
            raise ApiError(
                400, "invalid_request", f"field 'step': {workflow_id} has no step '{step_name}'"
            )
        await approve(control, workflow_id, step_name)
        return {"workflow": workflow_id, "step": step_name, "approved": True}

    @app.post("/v1/quorum/evaluate")
    async def evaluate(request: Request) -> dict:
        authorized(request)
        try:
            payload = EvaluateRequest.model_validate(await read_body(request))
            event = parse_event(payload.event)
        except ValidationError as error:
            raise ApiError(400, "invalid_request", str(error)) from None
        except InvalidEvent as error:
            raise ApiError(400, "invalid_event", error.reason) from None
        try:
            rule = node.rules.get(payload.rule)
        except KeyError:
            raise ApiError(404, "unknown_rule", f"this node has no rule '{payload.rule}'") from None
        verdict = await node.evaluate(event, rule)
        return json.loads(verdict.model_dump_json())

    async def validated(request: Request, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate(await read_body(request))
        except ValidationError as error:
            raise ApiError(400, "invalid_request", describe_problems(error)) from None

    @app.get("/v1/killswitch")
    async def killswitch_status() -> dict:
        return {"engaged": await node.kill_switch.status(), "categories": [*CATEGORIES, "all"]}

    @app.post("/v1/killswitch")
    async def killswitch_set(request: Request) -> dict:
        authorized(request)
        change = await validated(request, SwitchRequest)
        if change.category not in (*CATEGORIES, "all"):
            raise ApiError(
                400, "invalid_request", f"field 'category': expected one of {[*CATEGORIES, 'all']}"
            )
        category = ALL if change.category == "all" else change.category
        await node.kill_switch.set(category, change.enabled, by=change.by, reason=change.reason)
        return {"engaged": await node.kill_switch.status()}

    @app.get("/v1/shadow")
    async def shadow_status() -> dict:
        return {"services": await node.shadow.services()}

    @app.post("/v1/shadow")
    async def shadow_set(request: Request) -> dict:
        authorized(request)
        change = await validated(request, ShadowRequest)
        await node.shadow.set(change.service, change.enabled)
        return {"services": await node.shadow.services()}

    @app.get("/v1/shadow-report")
    async def get_shadow_report() -> dict:
        return {"decisions": await shadow_report(control)}

    @app.get("/v1/breaker")
    async def breaker_status(region: str | None = None) -> dict:
        regions = [region] if region else await node.breaker.regions()
        return {"breakers": [await node.breaker.state(r) for r in regions]}

    @app.get("/v1/rate-limits/{service}")
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

    @app.get("/healthz")
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
