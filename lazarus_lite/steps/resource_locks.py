"""Workflow steps that take and give back the resource lock named by the rule (`lock.acquire`,
`lock.release`). Not for: the lock mechanics (see `locks`)."""

from __future__ import annotations

from lazarus_lite.workflow.context import (
    LockTaken,
    LockToken,
    StepContext,
    StepOutput,
    WorkflowInputs,
)
from lazarus_lite.workflow.registry import step


class LockInputs(WorkflowInputs):
    """The lock the rule names (`lock` in the rule, the resource from the event)."""

    lock_kind: str
    lock_resource: str


class LockReleased(StepOutput):
    released: bool


@step("lock.acquire", output=LockTaken, inputs=LockInputs)
async def acquire_resource_lock(ctx: StepContext) -> LockTaken:
    """Take the rule's lock for this workflow (idempotent: a resumed workflow keeps its token)."""
    inputs = ctx.inputs_as(LockInputs)
    held = await ctx.env.locks.acquire(
        inputs.lock_kind, inputs.lock_resource, holder=ctx.workflow.id
    )
    return LockTaken(lock=LockToken(key=held.key, holder=held.holder, token=held.token))


@step("lock.release", output=LockReleased)
async def release_resource_lock(ctx: StepContext) -> LockReleased:
    held = ctx.held_lock()
    released = held is not None and await ctx.env.locks.release(held)
    return LockReleased(released=released)
