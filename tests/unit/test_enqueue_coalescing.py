"""The API's group commit (`ratequeue.coalescing`): concurrent single-message enqueues go out
together while earlier ones are on their way, and each request gets its own message's result."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from types import SimpleNamespace

import pytest
from redis.exceptions import ResponseError

from ratequeue import coalescing
from ratequeue.client import Enqueued
from ratequeue.coalescing import EnqueueCoalescer
from ratequeue.errors import EnqueueBacklogFull, IdConflict, ShardScriptFailed, ShardUnavailable
from ratequeue.rates import Rate
from ratequeue.shard import OutgoingMessage

_numbers = itertools.count()


def message(message_id: str, number: str | None = None) -> OutgoingMessage:
    """A message for `number`, or else for a number of its own (so it may go in any batch: a
    number's messages never travel in two at once)."""
    number = number or f"+1415{next(_numbers):07d}"
    return OutgoingMessage(id=message_id, number=number, segments=1,
                           default_rate=Rate(per_second=1, burst=1), body_json='"hi"')  # fmt: skip


class OneShard:
    """Routes every number to shard s0."""

    def shard_for(self, number: str) -> SimpleNamespace:
        return SimpleNamespace(id="s0")


class HeldClient(OneShard):
    """Stands in for the queue client: records each batch and answers it when released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list:
        batch = [m.id for m in messages]
        self.batches.append(batch)
        await self.release.wait()
        return [IdConflict(f"{i} conflicts") if i.startswith("conflict") else
                Enqueued(id=i, number="+14155550100", shard="s0", duplicate=False)
                for i in batch]  # fmt: skip


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout=5)


def test_messages_arriving_while_batches_are_in_flight_go_out_together_each_with_its_result() -> (
    None
):
    async def scenario() -> tuple[list, list[list[str]]]:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        first = []
        for index in range(coalescing.MAX_IN_FLIGHT):  # one at a time: a batch each
            first.append(asyncio.create_task(coalescer.enqueue(message(f"early-{index}"))))
            await until(lambda: len(client.batches) == len(first))
        later = [asyncio.create_task(coalescer.enqueue(message(name)))
                 for name in ("late-1", "conflict-2", "late-3")]  # fmt: skip
        await asyncio.sleep(0.01)
        assert len(client.batches) == coalescing.MAX_IN_FLIGHT  # the late ones wait...
        client.release.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *later), timeout=5)
        return results, client.batches

    results, batches = asyncio.run(scenario())
    # ... then go out in one batch.
    assert batches[coalescing.MAX_IN_FLIGHT :] == [["late-1", "conflict-2", "late-3"]]
    assert [r.id for r in results if isinstance(r, Enqueued)] == [
        *(f"early-{i}" for i in range(coalescing.MAX_IN_FLIGHT)),
        "late-1",
        "late-3",
    ]
    assert isinstance(results[-2], IdConflict)


def test_an_error_of_the_whole_batch_is_every_message_s_answer_each_its_own_instance() -> None:
    class Unrouted(OneShard):
        async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list:
            raise RuntimeError("no topology")

    async def scenario() -> list:
        coalescer = EnqueueCoalescer(Unrouted())  # type: ignore[arg-type]
        sent = (coalescer.enqueue(message(f"m-{i}")) for i in range(3))
        return await asyncio.wait_for(asyncio.gather(*sent), timeout=5)

    results = asyncio.run(scenario())
    assert [str(r) for r in results] == ["no topology"] * 3
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len({id(r) for r in results}) == 3  # raised by three handlers: three tracebacks


async def fill_in_flight(client: HeldClient, coalescer: EnqueueCoalescer) -> list[asyncio.Task]:
    """One request per batch slot, each its own batch, all held by `client`."""
    sent: list[asyncio.Task] = []
    for index in range(coalescing.MAX_IN_FLIGHT):
        sent.append(asyncio.create_task(coalescer.enqueue(message(f"early-{index}"))))
        await until(lambda: len(client.batches) == len(sent))
    return sent


def test_a_request_over_the_shard_s_pending_limit_is_refused_at_once_retryable() -> None:
    async def scenario() -> object:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client, max_pending=2)  # type: ignore[arg-type]
        held = await fill_in_flight(client, coalescer)
        waiting = [asyncio.create_task(coalescer.enqueue(message(f"w-{i}"))) for i in range(2)]
        await asyncio.sleep(0)
        refused = await asyncio.wait_for(coalescer.enqueue(message("over")), timeout=5)
        client.release.set()
        await asyncio.wait_for(asyncio.gather(*held, *waiting), timeout=5)
        return refused

    refused = asyncio.run(scenario())
    assert isinstance(refused, EnqueueBacklogFull)
    assert "s0" in str(refused) and "at most 2" in str(refused)


def test_a_request_cancelled_mid_batch_leaves_the_others_of_its_batch_answered() -> None:
    async def scenario() -> list:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        await fill_in_flight(client, coalescer)
        batch = [asyncio.create_task(coalescer.enqueue(message(f"b-{i}"))) for i in range(3)]
        client.release.set()
        await asyncio.sleep(0)
        batch[1].cancel()
        return await asyncio.wait_for(asyncio.gather(batch[0], batch[2]), timeout=5)

    assert [r.id for r in asyncio.run(scenario())] == ["b-0", "b-2"]


def test_a_batch_cancelled_on_its_way_answers_its_requests_retryable_instead_of_hanging() -> None:
    async def scenario() -> list:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        held = await fill_in_flight(client, coalescer)
        waiting = asyncio.create_task(coalescer.enqueue(message("waiting")))
        await asyncio.sleep(0)
        for batch in list(coalescer._batches):
            batch.cancel()
        return await asyncio.wait_for(asyncio.gather(*held, waiting), timeout=5)

    results = asyncio.run(scenario())
    assert len(results) == coalescing.MAX_IN_FLIGHT + 1
    assert all(isinstance(r, ShardUnavailable) and "cancelled" in str(r) for r in results)


def test_a_batch_request_goes_out_in_scripts_of_at_most_max_batch_each_with_its_result() -> None:
    async def scenario() -> tuple[list, list[list[str]]]:
        client = HeldClient()
        client.release.set()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        count = 2 * coalescing.MAX_BATCH + 1
        ids = [f"conflict-{i}" if i == 3 else f"m-{i}" for i in range(count)]
        results = await asyncio.wait_for(coalescer.enqueue_many(message(i) for i in ids), timeout=5)
        return results, client.batches

    results, batches = asyncio.run(scenario())
    assert max(len(batch) for batch in batches) == coalescing.MAX_BATCH
    assert sum(len(batch) for batch in batches) == 2 * coalescing.MAX_BATCH + 1
    assert isinstance(results[3], IdConflict)
    assert [r.id for i, r in enumerate(results) if i != 3] == [
        f"m-{i}" for i in range(len(results)) if i != 3
    ]


def test_a_batch_request_past_the_lane_s_backlog_is_refused_for_the_messages_not_admitted() -> None:
    async def scenario() -> tuple[list, list[list[str]]]:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client, max_pending=2)  # type: ignore[arg-type]
        held = await fill_in_flight(client, coalescer)
        batch = asyncio.create_task(coalescer.enqueue_many(message(f"b-{i}") for i in range(3)))
        await until(lambda: len(coalescer._lanes["s0"].pending) == 2)
        client.release.set()
        await asyncio.wait_for(asyncio.gather(*held), timeout=5)
        return await asyncio.wait_for(batch, timeout=5), client.batches

    results, batches = asyncio.run(scenario())
    assert "b-2" not in [sent for batch in batches for sent in batch]
    assert [r.id for r in results[:2]] == ["b-0", "b-1"]
    assert isinstance(results[2], EnqueueBacklogFull)


def test_a_batch_requests_messages_of_one_number_never_travel_in_two_scripts_at_once() -> None:
    async def scenario() -> list[list[str]]:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        hot = "+14155550100"
        ids = [f"hot-{i}" for i in range(coalescing.MAX_BATCH + 2)]
        batch = [message(i, hot) for i in ids] + [message("cold-1"), message("cold-2")]
        request = asyncio.create_task(coalescer.enqueue_many(batch))
        await until(lambda: len(client.batches) == 2)
        await asyncio.sleep(0.01)
        assert len(client.batches) == 2  # the hot number's last two wait for its first script
        client.release.set()
        await asyncio.wait_for(request, timeout=5)
        return client.batches

    batches = asyncio.run(scenario())
    hot_ids = [f"hot-{i}" for i in range(coalescing.MAX_BATCH + 2)]
    assert batches == [hot_ids[: coalescing.MAX_BATCH], ["cold-1", "cold-2"], hot_ids[-2:]]


def test_single_requests_of_one_number_still_go_out_in_scripts_side_by_side() -> None:
    async def scenario() -> int:
        client = HeldClient()
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        hot = "+14155550100"
        sent = []
        for index in range(coalescing.MAX_IN_FLIGHT):
            sent.append(asyncio.create_task(coalescer.enqueue(message(f"s-{index}", hot))))
            await until(lambda: len(client.batches) == len(sent))
        client.release.set()
        await asyncio.wait_for(asyncio.gather(*sent), timeout=5)
        return len(client.batches)

    assert asyncio.run(scenario()) == coalescing.MAX_IN_FLIGHT


class FirstCallFails(OneShard):
    """Its first script call fails as a whole with `error` (raised, or answered for each of its
    messages); later ones succeed."""

    def __init__(self, error: Exception, *, raised: bool = True) -> None:
        self.error, self.raised = error, raised
        self.batches: list[list[str]] = []

    async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list:
        batch = [m.id for m in messages]
        self.batches.append(batch)
        if len(self.batches) == 1:
            if self.raised:
                raise self.error
            return [self.error] * len(batch)
        return [Enqueued(id=i, number="+14155550100", shard="s0", duplicate=False) for i in batch]


def sent_after_a_failed_first_call(client: FirstCallFails) -> tuple[list, list[list[str]]]:
    async def scenario() -> tuple[list, list[list[str]]]:
        coalescer = EnqueueCoalescer(client)  # type: ignore[arg-type]
        hot = "+14155550100"
        batch = [message(f"hot-{i}", hot) for i in range(coalescing.MAX_BATCH + 5)]
        results = await asyncio.wait_for(coalescer.enqueue_many(batch), timeout=5)
        return results, client.batches

    return asyncio.run(scenario())


def test_a_failed_script_answers_its_requests_later_messages_of_its_numbers_unsent() -> None:
    client = FirstCallFails(ShardUnavailable("s0 is failing over; retry with the same id"))
    results, batches = sent_after_a_failed_first_call(client)
    assert len(batches) == 1  # the later five were never sent...
    assert all(isinstance(r, ShardUnavailable) for r in results)  # ...and share its error


@pytest.mark.parametrize(
    "error",
    [ResponseError("CORRUPTKEY rq:barrier is not a counter"), RuntimeError("a bug"),
     ShardScriptFailed("shard s0: its script failed")],
    ids=["redis-error", "unexpected", "script-failed"],
)  # fmt: skip
def test_a_script_failing_with_any_error_but_a_message_s_own_answers_the_later_ones_unsent(
    error: Exception,
) -> None:
    client = FirstCallFails(error, raised=False)
    results, batches = sent_after_a_failed_first_call(client)
    assert len(batches) == 1  # none of the later five overtook the failed ones
    assert all(type(r) is type(error) for r in results)


def test_a_message_s_own_refusal_in_a_script_leaves_the_request_s_later_messages_to_go_out() -> (
    None
):
    client = FirstCallFails(IdConflict("the id names another message"), raised=False)
    results, batches = sent_after_a_failed_first_call(client)
    assert [len(b) for b in batches] == [coalescing.MAX_BATCH, 5]
    assert all(isinstance(r, Enqueued) for r in results[coalescing.MAX_BATCH :])
