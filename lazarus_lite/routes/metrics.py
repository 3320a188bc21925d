"""`GET /metrics`: this controller node's Prometheus metrics (`lazarus_lite.metrics`) in the text
exposition format.

Not for: counting anything (the node's parts do, as they decide and act).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lazarus_lite.routes.context import NodeApi, node_api

router = APIRouter()


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format"}})  # fmt: skip
async def prometheus_metrics(api: NodeApi = Depends(node_api)) -> Response:
    return Response(generate_latest(api.node.metrics.registry), media_type=CONTENT_TYPE_LATEST)
