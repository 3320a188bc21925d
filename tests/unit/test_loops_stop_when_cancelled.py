"""The controller's background loops end when cancelled even if a cancellation is swallowed
below them (redis-py 8.1's stream reads were seen to return after their task was cancelled,
and `tests/lazarus/test_event_handled_again.py` then hung in one run of five)."""

from __future__ import annotations

import asyncio
import contextlib

from detection.streams import Received
from lazarus_lite.background import consume_events


class SwallowingStream:
    """A stream whose reads swallow the cancellation they are interrupted by."""

    async def receive(
        self, consumer: str, *, count: int = 10, block_ms: int = 100
    ) -> list[Received]:
        with contextlib.suppress(asyncio.CancelledError):  # what the library below did
            await asyncio.sleep(block_ms / 1000)
        return []


async def test_an_event_consumer_whose_read_swallows_its_cancellation_still_stops() -> None:
    handling: set[asyncio.Task] = set()
    consumer = asyncio.create_task(
        consume_events(
            SwallowingStream(),  # type: ignore[arg-type]
            "n1",
            lambda event: asyncio.sleep(0),
            handling,
            keep_every=1.0,
        )
    )
    await asyncio.sleep(0.05)
    consumer.cancel()
    done, _ = await asyncio.wait({consumer}, timeout=2)
    assert consumer in done, "the consumer kept running after it was cancelled"
    assert consumer.cancelled()
