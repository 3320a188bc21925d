"""Workflows over HTTP: `GET /v1/workflows/{id}` shows one with its history, and
`POST /v1/workflows/{id}/approve` opens one of its approval gates.

Not for: running workflows (`lazarus_lite.workflow`) or what an approval does
(`lazarus_lite.steps.approval`).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from common.http_contract import JsonBody, answers, read_json_model
from common.validation import quoted
from lazarus_lite.errors import ApiError
from lazarus_lite.routes.context import MAX_BODY_BYTES, NodeApi, mutating, node_api

router = APIRouter()


class ApproveRequest(JsonBody):
    step: str = Field(min_length=1, description="the gate's step name")


class Approved(BaseModel):
    workflow: str
    step: str
    approved: bool


async def workflow_answer(api: NodeApi, workflow_id: str) -> dict | None:
    """The workflow record as JSON with its history; None when there is no such workflow."""
    found = await api.workflows.load(workflow_id)
    if found is None:
        return None
    answer = json.loads(found.model_dump_json())
    answer["history"] = await api.workflows.history(workflow_id)
    return answer


@router.get(
    "/v1/workflows/{workflow_id}",
    response_model=None,
    responses=answers({200: None}, 404, 503),
)
async def get_workflow(workflow_id: str, api: NodeApi = Depends(node_api)) -> dict:
    found = await workflow_answer(api, workflow_id)
    if found is None:
        raise ApiError(404, "not_found", f"no workflow {quoted(workflow_id)}")
    return found


@mutating(router, "/v1/workflows/{workflow_id}/approve", ApproveRequest, {200: Approved}, 404)
async def approve_step(
    workflow_id: str, request: Request, api: NodeApi = Depends(node_api)
) -> dict:
    step_name = (await read_json_model(request, ApproveRequest, MAX_BODY_BYTES)).step
    found = await api.workflows.load(workflow_id)
    if found is None:
        raise ApiError(404, "not_found", f"no workflow {quoted(workflow_id)}")
    if step_name not in found.steps:
        problem = f"field 'step': {quoted(workflow_id)} has no step {quoted(step_name)}"
        raise ApiError(400, "invalid_request", problem)
    await api.store.approvals.approve(workflow_id, step_name)
    return {"workflow": workflow_id, "step": step_name, "approved": True}
