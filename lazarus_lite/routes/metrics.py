"""`GET /metrics`: this controller node's Prometheus metrics (`lazarus_lite.metrics`) in the text
exposition format.

Not for: counting anything (the node's parts do, as they decide and act).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from common.metrics_exposition import metrics_response
from lazarus_lite.routes.context import NodeApi, node_api

router = APIRouter()


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format"}})  # fmt: skip
async def prometheus_metrics(request: Request, api: NodeApi = Depends(node_api)) -> Response:
    return metrics_response(api.node.metrics.registry, request.headers.get("accept"))
