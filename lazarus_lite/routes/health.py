"""`GET /healthz`: whether this node's control store answers.

Not for: the health of the shards (the shard watch reports it) or of the queue.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lazarus_lite.routes.context import NodeApi, node_api

router = APIRouter()


class Health(BaseModel):
    node: str
    healthy: bool
    checks: list[dict[str, Any]]


@router.get(
    "/healthz",
    response_model=None,
    responses={200: {"model": Health, "description": "the control store answers"},
               503: {"model": Health, "description": "the control store does not"}},
)  # fmt: skip
async def healthz(api: NodeApi = Depends(node_api)) -> JSONResponse:
    try:
        ok = await api.store.ping()
    except api.store.unavailable:
        ok = False
    checks = [{"name": "control_store", "ok": ok}]
    return JSONResponse(
        {"node": api.settings.node_id, "healthy": ok, "checks": checks},
        status_code=200 if ok else 503,
    )
