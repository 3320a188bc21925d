"""The safety gates over HTTP: the kill switch and shadow mode (read and set), the shadow
report, the regional circuit breakers and a service's incident rate limit (read only).

Not for: what the gates decide (`lazarus_lite.gates`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from common.http_contract import JsonBody, answers, read_json_model
from common.validation import ServiceName
from lazarus_lite.errors import ApiError
from lazarus_lite.gates import ALL
from lazarus_lite.routes.context import MAX_BODY_BYTES, NodeApi, mutating, node_api
from lazarus_lite.shadow_report import shadow_report
from lazarus_lite.workflow.definition import CATEGORIES

router = APIRouter()


class SwitchRequest(JsonBody):
    enabled: bool
    category: str = "all"
    reason: str = ""
    by: str = ""


class ShadowRequest(JsonBody):
    enabled: bool
    service: ServiceName = "*"  # one service as events name it, or * for all


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


def _switch_schema() -> dict[str, Any]:
    """The kill switch body as published: `category` names one of the categories."""
    schema = SwitchRequest.model_json_schema()
    schema["properties"]["category"]["enum"] = [*CATEGORIES, "all"]
    return schema


@router.get("/v1/killswitch", response_model=None, responses=answers({200: SwitchState}, 503))
async def killswitch_status(api: NodeApi = Depends(node_api)) -> dict:
    return {
        "engaged": await api.node.gates.kill_switch.status(),
        "categories": [*CATEGORIES, "all"],
    }


@mutating(router, "/v1/killswitch", _switch_schema(), {200: SwitchState})
async def killswitch_set(request: Request, api: NodeApi = Depends(node_api)) -> dict:
    change = await read_json_model(request, SwitchRequest, MAX_BODY_BYTES)
    if change.category not in (*CATEGORIES, "all"):
        raise ApiError(
            400, "invalid_request", f"field 'category': expected one of {[*CATEGORIES, 'all']}"
        )
    category = ALL if change.category == "all" else change.category
    await api.node.gates.kill_switch.set(
        category, change.enabled, by=change.by, reason=change.reason
    )
    return {"engaged": await api.node.gates.kill_switch.status()}


@router.get("/v1/shadow", response_model=None, responses=answers({200: ShadowState}, 503))
async def shadow_status(api: NodeApi = Depends(node_api)) -> dict:
    return {"services": await api.node.gates.shadow.services()}


@mutating(router, "/v1/shadow", ShadowRequest, {200: ShadowState})
async def shadow_set(request: Request, api: NodeApi = Depends(node_api)) -> dict:
    change = await read_json_model(request, ShadowRequest, MAX_BODY_BYTES)
    await api.node.gates.shadow.set(change.service, change.enabled)
    return {"services": await api.node.gates.shadow.services()}


@router.get(
    "/v1/shadow-report", response_model=None, responses=answers({200: ShadowDecisions}, 503)
)
async def get_shadow_report(api: NodeApi = Depends(node_api)) -> dict:
    return {"decisions": await shadow_report(api.store.records, api.store.topology)}


@router.get("/v1/breaker", response_model=None, responses=answers({200: Breakers}, 503))
async def breaker_status(region: str | None = None, api: NodeApi = Depends(node_api)) -> dict:
    breaker = api.node.gates.breaker
    regions = [region] if region else await breaker.regions()
    return {"breakers": [await breaker.state(r) for r in regions]}


@router.get(
    "/v1/rate-limits/{service}",
    response_model=None,
    responses=answers({200: RateLimitState}, 503),
)
async def rate_limit_status(service: str, api: NodeApi = Depends(node_api)) -> dict:
    rate_limit = api.node.gates.rate_limit
    count = await rate_limit.count(service)
    limit = rate_limit.overrides.get(service, rate_limit.threshold)
    return {
        "service": service,
        "incidents": count,
        "limit": limit,
        "suspended": count > limit,
        "window_seconds": rate_limit.window,
    }
