"""A load run with a turn in it, for tests of the load generator against the real API: the run
goes until enough messages are acknowledged, then something happens to the API (it goes away,
its replicas stop, ...), and producing stops a while later.

Not for: chaos experiments (`chaos.runner` injects faults by the experiment's method).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from chaos.load import LoadRun


def run_with_a_turn(
    load: LoadRun,
    *,
    after_acknowledged: int,
    turn: Callable[[], None],
    stop_after: float,
    drain: float,
) -> float:
    """Run `load` until `after_acknowledged` messages are acknowledged, call `turn`, stop
    producing `stop_after` seconds later and drain for at most `drain` seconds; returns when
    `turn` was called (epoch seconds)."""
    turned_at = 0.0

    async def turn_then_stop(stop_producing: asyncio.Event) -> None:
        nonlocal turned_at
        while len(load.ledger.acknowledged) < after_acknowledged:
            await asyncio.sleep(0.02)
        turn()
        turned_at = time.time()
        await asyncio.sleep(stop_after)
        stop_producing.set()

    async def run() -> None:
        load.stop_producing = asyncio.Event()
        turning = asyncio.create_task(turn_then_stop(load.stop_producing))
        await load.run(duration=3600, drain_timeout=drain)
        await turning

    asyncio.run(run())
    return turned_at
