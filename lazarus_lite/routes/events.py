"""Event intake and the audit trail: `POST /v1/events` deposits an event into the stream (400
for a malformed one, 422 for one dated too far ahead, 409 for one with another event's id),
`GET /v1/events` lists the decisions, `GET /v1/events/{id}` shows one with its workflow.

Not for: deciding an event (the controller does, from the stream).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from common.http_contract import answers, read_json_body
from common.validation import quoted
from detection.errors import EventDatedAhead, InvalidEvent
from detection.events import Event, parse_arriving_event
from lazarus_lite.audit import AuditRecord
from lazarus_lite.errors import ApiError, EventIdReused
from lazarus_lite.routes.context import MAX_BODY_BYTES, NodeApi, mutating, node_api
from lazarus_lite.routes.workflows import workflow_answer

router = APIRouter()


class Accepted(BaseModel):
    id: str
    position: str


class EventList(BaseModel):
    events: list[AuditRecord]


@mutating(router, "/v1/events", Event, {202: Accepted}, 409, 422, status_code=202)
async def post_event(request: Request, api: NodeApi = Depends(node_api)) -> JSONResponse:
    body = await read_json_body(request, MAX_BODY_BYTES)
    try:
        event = parse_arriving_event(body, max_ahead=api.settings.max_event_ahead)
    except EventDatedAhead as error:
        raise ApiError(422, "event_dated_ahead", error.reason) from None
    except InvalidEvent as error:
        raise ApiError(400, "invalid_event", error.reason) from None
    try:
        position = await api.node.submit(event)
    except EventIdReused as error:
        raise ApiError(409, "event_id_reused", str(error)) from None
    return JSONResponse({"id": event.id, "position": position}, status_code=202)


@router.get("/v1/events", response_model=None, responses=answers({200: EventList}, 400, 503))
async def list_events(
    service: str | None = None,
    # NaN or infinity would reach the control store, which refuses them (a 503 before).
    since: float | None = Query(None, allow_inf_nan=False, description="Unix time"),
    limit: int = Query(100, ge=1, le=1000),
    api: NodeApi = Depends(node_api),
) -> dict:
    records = await api.node.audit.list(service=service, since=since, limit=limit)
    return {"events": [json.loads(r.model_dump_json()) for r in records]}


@router.get(
    "/v1/events/{event_id}",
    response_model=None,
    responses=answers({200: AuditRecord}, 404, 503),
)
async def get_event(event_id: str, api: NodeApi = Depends(node_api)) -> dict:
    record = await api.node.audit.get(event_id)
    if record is None:
        raise ApiError(404, "not_found", f"no event {quoted(event_id)} in the audit trail")
    answer = json.loads(record.model_dump_json())
    if record.workflow_id:
        answer["workflow"] = await workflow_answer(api, record.workflow_id)
    return answer
