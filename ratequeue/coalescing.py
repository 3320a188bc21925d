"""Concurrent single-message enqueues of one API process, sent to the shards together (a group
commit): each request waits for its own message's result, but the messages that arrive while
earlier ones are on their way go out in one `enqueue_many`, i.e. one script call and one `WAIT`
per shard for all of them, instead of one each. A message alone (a quiet API) goes out at once.

What each message gets is what `enqueue_many` gives it: its own ok, duplicate, conflict or full;
a retryable error (no replica confirmed the shard's write in time) is shared by the messages of
that shard's batch, as it would be for each of them sent alone at that moment. A message is
written before its request is answered, so a producer that waits for each answer keeps its
order (concurrent requests had no order before either). Not for: batches a producer sends in
one request (those call `enqueue_many` themselves).
"""

from __future__ import annotations

import asyncio

from ratequeue.client import AsyncRatequeueClient, Enqueued
from ratequeue.shard import OutgoingMessage

# Batches on their way at once: enough to keep every shard busy while the next batch gathers.
MAX_IN_FLIGHT = 4
# The most messages one batch carries (one script call per shard runs them all).
MAX_BATCH = 256


class EnqueueCoalescer:
    def __init__(self, client: AsyncRatequeueClient) -> None:
        self.client = client
        self._pending: list[tuple[OutgoingMessage, asyncio.Future[Enqueued | Exception]]] = []
        self._in_flight = 0

    async def enqueue(self, message: OutgoingMessage) -> Enqueued | Exception:
        """The message's acknowledgement, or the error that refused it (as `enqueue_many`)."""
        result: asyncio.Future[Enqueued | Exception] = asyncio.get_running_loop().create_future()
        self._pending.append((message, result))
        if self._in_flight < MAX_IN_FLIGHT:
            self._in_flight += 1
            # Started on the next turn of the loop: the requests read in this turn join it.
            asyncio.get_running_loop().create_task(self._send_pending())
        return await result

    async def _send_pending(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    results = await self.client.enqueue_many(message for message, _ in batch)
                except Exception as error:  # e.g. no topology: every message of the batch
                    results = [error] * len(batch)
                for (_, waiting), outcome in zip(batch, results, strict=True):
                    if not waiting.done():  # its request may have been cancelled meanwhile
                        waiting.set_result(outcome)
        finally:
            self._in_flight -= 1
