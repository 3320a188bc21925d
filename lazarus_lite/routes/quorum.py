"""The peer endpoint of the quorum: `POST /v1/quorum/evaluate` runs a rule's checks from this
node's vantage point for the coordinating node.

Not for: counting the quorum (the coordinator does, in `lazarus_lite.controller`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from common.http_contract import JsonBody, read_json_model
from common.validation import quoted
from detection.errors import InvalidEvent
from detection.events import Event, parse_event
from lazarus_lite.audit import NodeVerdict
from lazarus_lite.errors import ApiError
from lazarus_lite.routes.context import MAX_BODY_BYTES, NodeApi, mutating, node_api

router = APIRouter()


class EvaluateRequest(JsonBody):
    event: dict[str, Any] = Field(json_schema_extra=Event.model_json_schema())
    rule: str


@mutating(router, "/v1/quorum/evaluate", EvaluateRequest, {200: NodeVerdict}, 404)
async def evaluate(request: Request, api: NodeApi = Depends(node_api)) -> dict:
    payload = await read_json_model(request, EvaluateRequest, MAX_BODY_BYTES)
    try:
        event = parse_event(payload.event)
    except InvalidEvent as error:
        raise ApiError(400, "invalid_event", f"field 'event': {error.reason}") from None
    try:
        rule = api.node.rules.get(payload.rule)
    except KeyError:
        raise ApiError(404, "unknown_rule",
                       f"this node has no rule {quoted(payload.rule)}") from None  # fmt: skip
    verdict = await api.node.evaluate(event, rule)
    return json.loads(verdict.model_dump_json())
