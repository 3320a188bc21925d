"""Concurrent single-message enqueues of one API process, sent to their shard together (a group
commit): each request waits for its own message's result, but the messages for a shard that
arrive while earlier batches of that shard are on their way go out in one `enqueue_many`, i.e.
one script call and one `WAIT` for all of them, instead of one each. A message alone (a quiet
API) goes out at once.

Each shard has its own lane (pending messages, batches in flight): a shard that is slow or
failing over holds only its own requests, and a request is answered as soon as its shard's
batch returns. A lane holds at most `MAX_PENDING` waiting messages; past that a request is
refused at once with `EnqueueBacklogFull` (503, retry later), nothing written.

What each message gets is what `enqueue_many` gives it: its own ok, duplicate, conflict or full;
an error of the shard's batch is every message's of that batch, each request its own instance of
it. A message is written before its request is answered, so a producer that waits for each answer
keeps its order (concurrent requests had no order before either). A batch request's messages
of one number never travel in two scripts at once (the later ones wait for the script carrying
the earlier), so they are queued in the request's order; if that script fails as a whole, the
later ones get its error unsent, so a retry of them all keeps the order too.

A batch a producer sends in one request (`enqueue_many`) goes through the same lanes: each
shard's part joins that shard's waiting messages, so it goes out in scripts of at most
`MAX_BATCH` lines under the lane's in-flight limit, and it is admitted per message in the
batch's order: the messages that find no room in their lane's backlog are refused with
`EnqueueBacklogFull`, nothing of them written, and the others go out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from ratequeue.client import AsyncRatequeueClient, Enqueued
from ratequeue.errors import (
    MESSAGE_REFUSALS,
    EnqueueBacklogFull,
    RatequeueError,
    ShardUnavailable,
    own_instance,
)
from ratequeue.shard import OutgoingMessage

# Batches of one shard on their way at once: enough to keep the shard busy while the next gathers.
MAX_IN_FLIGHT = 4
# The most messages one batch carries (one script call runs them all).
MAX_BATCH = 256
# The most messages a shard's lane holds waiting for a batch: 8 full batches behind the ones in
# flight, so a stalled shard costs bounded memory and its producers hear about it at once.
MAX_PENDING = 8 * MAX_BATCH


class Waiting(NamedTuple):
    """A message waiting in its lane, the future answering it, and what its place in line is
    kept within: its batch request's messages of its number (None for a single enqueue). A
    tuple: the API's every enqueue makes one."""

    message: OutgoingMessage
    future: asyncio.Future[Enqueued | Exception]
    ordered_by: tuple[object, str] | None = None


def failed_the_call(outcome: Enqueued | Exception) -> bool:
    """An error other than a message's own refusal failed its script call as a whole (its
    shard unavailable or full, or an error nobody expected): a request's later messages of the
    same numbers are answered with it, unsent, so the producer's retry of them all, with the
    same ids, keeps their order (as the client does within a shard's share)."""
    return isinstance(outcome, Exception) and not isinstance(outcome, MESSAGE_REFUSALS)


@dataclass
class ShardLane:
    """One shard's messages waiting to go out, how many of its batches are on their way, and
    the (request, number) pairs those batches carry: a request's next messages of a number wait
    for the batch carrying its earlier ones, since two batches on their way at once could be
    queued in either order."""

    pending: list[Waiting] = field(default_factory=list)
    in_flight: int = 0
    on_their_way: Counter[tuple[object, str]] = field(default_factory=Counter)

    def take_batch(self) -> list[Waiting]:
        """The next batch: waiting messages in order, up to MAX_BATCH, leaving waiting every
        message whose request's earlier messages of its number are on their way or waiting."""
        batch: list[Waiting] = []
        waiting: list[Waiting] = []
        held = set(self.on_their_way)
        for entry in self.pending:
            key = entry.ordered_by
            if (key is not None and key in held) or len(batch) == MAX_BATCH:
                if key is not None:
                    held.add(key)  # its later messages must not overtake it
                waiting.append(entry)
            else:
                batch.append(entry)
        self.pending = waiting
        self.on_their_way.update(e.ordered_by for e in batch if e.ordered_by is not None)
        return batch

    def batch_done(self, batch: list[Waiting]) -> None:
        self.on_their_way.subtract(e.ordered_by for e in batch if e.ordered_by is not None)
        self.on_their_way += Counter()  # drops the pairs at zero

    def take_followers(self, failed: dict[tuple[object, str], Exception]) -> list[Waiting]:
        """Take out the waiting messages of the (request, number) pairs whose batch failed."""
        followers = [e for e in self.pending if e.ordered_by in failed]
        self.pending = [e for e in self.pending if e.ordered_by not in failed]
        return followers


class EnqueueCoalescer:
    def __init__(self, client: AsyncRatequeueClient, *, max_pending: int = MAX_PENDING) -> None:
        self.client = client
        self.max_pending = max_pending
        self._lanes: dict[str, ShardLane] = {}
        # The loop keeps only weak references to tasks: a batch on its way must not be collected.
        self._batches: set[asyncio.Task[None]] = set()

    async def enqueue(self, message: OutgoingMessage) -> Enqueued | Exception:
        """The message's acknowledgement, or the error that refused it (as `enqueue_many`)."""
        admitted = self._admit(message)
        return await admitted if isinstance(admitted, asyncio.Future) else admitted

    async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list[Enqueued | Exception]:
        """Each message's acknowledgement or the error that refused it, in order; a message
        that finds its lane's backlog full is refused (EnqueueBacklogFull), the others go out."""
        request = object()  # its messages of one number keep their order
        admitted = [self._admit(message, request) for message in messages]
        waiting = [entry for entry in admitted if isinstance(entry, asyncio.Future)]
        answers = iter(await asyncio.gather(*waiting))
        return [next(answers) if isinstance(entry, asyncio.Future) else entry for entry in admitted]

    def _admit(
        self, message: OutgoingMessage, request: object | None = None
    ) -> asyncio.Future[Enqueued | Exception] | Exception:
        """Put the message in its shard's lane (the future answering it), or the error refusing
        it at once, nothing written."""
        try:
            shard_id = self.client.shard_for(message.number).id
        except RatequeueError as error:  # e.g. no topology yet
            return error
        lane = self._lanes.setdefault(shard_id, ShardLane())
        if len(lane.pending) >= self.max_pending:
            return EnqueueBacklogFull(
                f"shard {shard_id}: {len(lane.pending)} enqueues already wait for it (at most "
                f"{self.max_pending}); nothing was written, retry later with the same id"
            )
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Enqueued | Exception] = loop.create_future()
        ordered_by = None if request is None else (request, message.number)
        lane.pending.append(Waiting(message, result, ordered_by))
        if lane.in_flight < MAX_IN_FLIGHT:
            lane.in_flight += 1
            # Started on the next turn of the loop: the requests read in this turn join it.
            batch = loop.create_task(self._send_pending(shard_id, lane))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)
        return result

    async def _send_pending(self, shard_id: str, lane: ShardLane) -> None:
        batch: list[Waiting] = []
        try:
            while lane.pending:
                batch = lane.take_batch()
                if not batch:
                    # Every waiting message's number is on its way in another batch, whose
                    # sender takes them next.
                    break
                try:
                    results = await self.client.enqueue_many(entry.message for entry in batch)
                except Exception as error:  # e.g. no topology: every message of the batch
                    results = [error] * len(batch)
                finally:
                    lane.batch_done(batch)
                failed: dict[tuple[object, str], Exception] = {}
                for entry, outcome in zip(batch, results, strict=True):
                    answer(entry.future, outcome)
                    if entry.ordered_by is not None and failed_the_call(outcome):
                        failed.setdefault(entry.ordered_by, outcome)
                for follower in lane.take_followers(failed) if failed else []:
                    answer(follower.future, failed[follower.ordered_by])  # type: ignore[index]
                batch = []
        finally:
            lane.in_flight -= 1
            # Cancelled on its way (e.g. the API shutting down): answer, never leave a request
            # hanging; with no batch of the lane left, the waiting messages would never go out.
            left = batch + (lane.pending if lane.in_flight == 0 else [])
            if lane.in_flight == 0:
                lane.pending = []
            for entry in left:
                answer(entry.future, ShardUnavailable(
                    f"shard {shard_id}: the batch carrying this message was cancelled; it may "
                    "or may not be written, retry with the same id"))  # fmt: skip


def answer(waiting: asyncio.Future[Enqueued | Exception], outcome: Enqueued | Exception) -> None:
    """Give a request its result. An error shared by a batch is copied: an exception raised by
    many handlers would gather every one's traceback and keep all their frames alive."""
    if waiting.done():  # its request was cancelled meanwhile
        return
    waiting.set_result(own_instance(outcome) if isinstance(outcome, Exception) else outcome)
