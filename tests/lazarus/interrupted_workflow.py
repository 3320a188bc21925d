"""A workflow whose middle step runs long the first time (the store is made to fail meanwhile)
and quickly when resumed, with each step's runs counted: what the store-outage tests of the
workflow engine run, on the Redis store (`test_workflow_store_outage`) and on etcd
(`test_workflow_etcd_quorum_loss`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lazarus_lite.workflow.context import StepContext
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.registry import step

runs: dict[str, int] = {}
stopped_at: dict[str, float] = {}


@step("test.outage.count")
async def counted_step(ctx: StepContext) -> dict[str, Any]:
    runs[ctx.step] = runs.get(ctx.step, 0) + 1
    return {}


@step("test.outage.long")
async def long_step(ctx: StepContext) -> dict[str, Any]:
    """Long on its first run (the store dies meanwhile), quick when resumed."""
    runs[ctx.step] = runs.get(ctx.step, 0) + 1
    if runs[ctx.step] == 1:
        try:
            await asyncio.sleep(60)
        finally:
            stopped_at[ctx.step] = time.monotonic()
    return {}


INTERRUPTED = parse_workflow("""
name: interrupted
timeout: 120
steps:
  - {name: before, run: test.outage.count}
  - {name: long, run: test.outage.long, needs: [before]}
  - {name: after, run: test.outage.count, needs: [long]}
""", "interrupted.yaml")  # fmt: skip


async def until(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(0.1)
