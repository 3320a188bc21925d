"""What the control store keeps about one run of a workflow: its definition snapshot, its inputs
and each step's status and output, all as JSON (a record written by an older version of the
code must still load and resume). Not for: reading outputs as typed models (see `context`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from lazarus_lite.workflow.definition import WorkflowDefinition


class StepRecord(BaseModel):
    status: Literal["pending", "running", "succeeded", "failed"] = "pending"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    node: str | None = None
    output: dict[str, Any] = Field(default_factory=dict, description="the step's output model")
    error: str | None = None


class WorkflowRecord(BaseModel):
    id: str
    definition: WorkflowDefinition
    inputs: dict[str, Any]
    event_id: str | None = None
    status: Literal["running", "succeeded", "escalated"] = "running"
    created_at: float
    deadline: float
    finished_at: float | None = None
    escalation: str | None = None
    steps: dict[str, StepRecord]
    nodes: list[str] = Field(default_factory=list, description="nodes that ran it, in order")
