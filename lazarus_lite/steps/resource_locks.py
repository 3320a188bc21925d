"""Workflow steps that take and give back the resource lock named by the rule (`lock.acquire`,
`lock.release`). Not for: the lock mechanics (see `locks`)."""

from __future__ import annotations

from typing import Any

from lazarus_lite.workflow import StepContext, step


@step("lock.acquire")
async def acquire_resource_lock(ctx: StepContext) -> dict[str, Any]:
    """Take the rule's lock for this workflow (idempotent: a resumed workflow keeps its token)."""
    kind, resource = ctx.inputs["lock_kind"], ctx.inputs["lock_resource"]
    held = await ctx.env.locks.acquire(kind, resource, holder=ctx.workflow.id)
    return {"lock": {"key": held.key, "holder": held.holder, "token": held.token}}


@step("lock.release")
async def release_resource_lock(ctx: StepContext) -> dict[str, Any]:
    held = ctx.held_lock()
    released = held is not None and await ctx.env.locks.release(held)
    return {"released": released}
