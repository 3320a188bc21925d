"""An approval gate for workflows: a step that holds the workflow until an operator approves it
(`POST /v1/workflows/{id}/approve`), for services that want a person in the loop before a
destructive step. Its waiting is durable like any step: if the node dies, the node that resumes
the workflow waits on the same approval. Not for: notifications (the pager says a gate waits).
"""

from __future__ import annotations

import asyncio

from lazarus_lite.workflow.context import StepContext, StepOutput
from lazarus_lite.workflow.registry import step

APPROVAL_STEP = "approval.wait"  # what a workflow file's `run` says for a gate


class Approved(StepOutput):
    approved: bool


@step(APPROVAL_STEP, output=Approved)
async def wait_for_approval(ctx: StepContext) -> Approved:
    """Wait (within the step's timeout) until the gate is approved."""
    poll = float(ctx.params.get("poll_seconds", 0.2))
    while not await ctx.env.store.approvals.is_approved(ctx.workflow.id, ctx.step):
        await asyncio.sleep(poll)
    return Approved(approved=True)
