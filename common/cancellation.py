"""Stopping background tasks for good, because on Python 3.11 a `wait_for` inside redis-py can
swallow a cancellation (the task then carries on to its next await): `cancel_until_done`
cancels tasks and waits for them, cancelling again whatever still runs; `stop_if_cancelled`
lets a loop that survives its own failures notice it was asked to stop all the same.

Not for: deciding what to stop, or logging what a task raised (their owners do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

# How long a cancelled task is given before it is cancelled again.
ASK_AGAIN_AFTER = 0.5


async def cancel_until_done(tasks: Iterable[asyncio.Task | asyncio.Future]) -> None:
    """Cancel every task and return once all are done (their results and errors dropped)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=ASK_AGAIN_AFTER)


def stop_if_cancelled() -> None:
    """Raise CancelledError when this task has been asked to stop. A loop that survives its own
    failures would otherwise run on for ever after a cancellation swallowed below it: seen with
    redis-py 8.1, whose `XREADGROUP` (or `XAUTOCLAIM`) sometimes returned or failed normally
    after the task was cancelled, its task still `cancelling()`, and whoever stopped the loop
    waited on it for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
