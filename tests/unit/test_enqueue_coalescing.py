"""The API's group commit (`ratequeue.coalescing`): concurrent single-message enqueues go out
together while earlier ones are on their way, and each request gets its own message's result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ratequeue import coalescing
from ratequeue.client import Enqueued
from ratequeue.coalescing import EnqueueCoalescer
from ratequeue.errors import IdConflict
from ratequeue.rates import Rate
from ratequeue.shard import OutgoingMessage


def message(message_id: str) -> OutgoingMessage:
    return OutgoingMessage(id=message_id, number="+14155550100", segments=1,
                           default_rate=Rate(per_second=1, burst=1), body_json='"hi"')  # fmt: skip


class HeldClient:
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


def test_an_error_of_the_whole_batch_is_every_message_s_answer() -> None:
    class Unrouted:
        async def enqueue_many(self, messages: Iterable[OutgoingMessage]) -> list:
            raise RuntimeError("no topology")

    async def scenario() -> list:
        coalescer = EnqueueCoalescer(Unrouted())  # type: ignore[arg-type]
        sent = (coalescer.enqueue(message(f"m-{i}")) for i in range(3))
        return await asyncio.wait_for(asyncio.gather(*sent), timeout=5)

    results = asyncio.run(scenario())
    assert [str(r) for r in results] == ["no topology"] * 3
