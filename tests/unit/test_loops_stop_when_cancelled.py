"""Background loops that survive their own failures (the controller's event consumer and shard
watch, the API client's topology follower) end when cancelled even if a cancellation is
swallowed below them (redis-py 8.1's stream reads were seen to return after their task was
cancelled, and `tests/lazarus/test_event_handled_again.py` then hung in one run of five)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from common.cancellation import cancel_until_done
from detection.streams import Received
from lazarus_lite.background import consume_events
from lazarus_lite.shard_watch import watch_forever
from lazarus_lite.workflow.engine import WorkflowEngine
from ratequeue.client import AsyncRatequeueClient, ClientSettings


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


class SwallowsOneCancellation:
    """A wait that swallows the first cancellation it is interrupted by, as the library below
    did; only the first, so a loop that misses it is still stopped by the test's clean-up."""

    def __init__(self) -> None:
        self.swallowed = False

    async def wait(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True


class SwallowingShardWatch:
    """A shard watch whose passes swallow the cancellation they are interrupted by, failing or
    not as told."""

    node_id = "n1"
    settings = SimpleNamespace(interval=0.01, unwritable_after=60.0)

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.pass_wait = SwallowsOneCancellation()

    async def run_once(self) -> None:
        await self.pass_wait.wait(0.05)
        if self.fail:
            raise ConnectionError("the store is away")


async def stops_within(task: asyncio.Task, seconds: float = 2.0) -> bool:
    await asyncio.sleep(0.03)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task not in done:
        await cancel_until_done([task])  # leave nothing running for the next test
        return False
    return task.cancelled()


@pytest.mark.parametrize("fail", [False, True], ids=["passing", "failing"])
async def test_a_shard_watch_whose_pass_swallows_its_cancellation_still_stops(fail: bool) -> None:
    watching = asyncio.create_task(watch_forever(SwallowingShardWatch(fail)))  # type: ignore[arg-type]
    assert await stops_within(watching), "the shard watch kept running after it was cancelled"


class SwallowingTopologyStore:
    """A map store whose watch swallows its cancellation and then ends, as a broken stream
    would, so the follower would watch again."""

    def __init__(self) -> None:
        self.stream_wait = SwallowsOneCancellation()

    async def load(self) -> None:
        return None

    async def watch(self, *, after_epoch: int = 0, refresh_every: float = 2.0):
        await self.stream_wait.wait(0.05)
        raise ConnectionError("the watch broke")
        yield  # an async generator


async def test_an_api_client_whose_topology_watch_swallows_its_cancellation_still_closes() -> None:
    client = AsyncRatequeueClient(
        "redis://127.0.0.1:1", ClientSettings(refresh_interval=0.01),
        topology=SwallowingTopologyStore(),  # type: ignore[arg-type]
    )  # fmt: skip
    following = asyncio.create_task(client._follow_notifications())
    assert await stops_within(following), "the topology follower kept running after cancel"
    await client.close()


class LeasesRenewedAtOnce:
    """Workflow leases whose renewal answers at once: a cancel that arrives as it answers is
    dropped by Python 3.11's `wait_for` (it returns the answer), as a store that answers just
    then would have it."""

    def __init__(self) -> None:
        self.renewed = asyncio.Event()

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        self.renewed.set()
        return True

    async def load(self, workflow_id: str) -> None:
        return None  # no record: no resource lock to renew


async def test_a_workflow_lease_keeper_whose_cancel_wait_for_dropped_still_stops() -> None:
    leases = LeasesRenewedAtOnce()
    env = SimpleNamespace(store=SimpleNamespace(workflows=leases), node_id="n1")
    engine = WorkflowEngine(env, {})  # type: ignore[arg-type]
    keeping = asyncio.create_task(engine._keep_ownership("wf-1"))
    await leases.renewed.wait()  # woken as the renewal answers, before its waiter is told

    keeping.cancel()
    done, _ = await asyncio.wait({keeping}, timeout=0.6)  # before its next renewal is due
    stopped = keeping in done
    await cancel_until_done([keeping])
    assert stopped, "the lease keeper kept renewing after it was cancelled"
