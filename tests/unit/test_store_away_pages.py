"""Specification of when a controller's shard watch pages a person because the store is away
(`ShardWatch` with `on_store_away`): only when the store is unreachable (a connection error or
a read that outlived `store_timeout`, not a store that answered something wrong), and only once
it has been away for `self_report_after`, so a blip of the store pages nobody."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from common.redis_processes import free_port
from detection.events import Event
from lazarus_lite.shard_watch import ShardWatch, WatchSettings
from ratequeue.topology import NodeRef, Shard, Topology

SETTINGS = WatchSettings(interval=0.01, self_report_after=0.3, store_timeout=0.2)


class Store:
    """A topology that answers, then fails the way it is told (or hangs)."""

    def __init__(self) -> None:
        primary = NodeRef(name="s0-primary", host="127.0.0.1", port=free_port(("127.0.0.1",)))
        self.topology_answer = Topology(
            epoch=1, shards=[Shard(id="s0", slots=(0, 16383), epoch=1, primary=primary)]
        )
        self.failure: Exception | None = None
        self.hangs = False
        self.topology = self
        self.records = SimpleNamespace(write_failures=self._no_failures)
        self.sensors = SimpleNamespace(heartbeats=self._no_heartbeats)

    async def load(self) -> Topology:
        if self.hangs:
            await asyncio.sleep(60)
        if self.failure is not None:
            raise self.failure
        return self.topology_answer

    async def _no_failures(self) -> dict[str, Any]:
        return {}

    async def _no_heartbeats(self) -> list[Event]:
        return []


def pages_after(store: Store, seconds: float, fail: Any, answering_for: float = 0.0) -> list[str]:
    """The watch reads the topology for `answering_for` seconds, then the store fails as
    `fail` sets it up for `seconds` (the primary, nothing listening on its port, is down all
    along)."""
    pages: list[str] = []

    async def page(event: Event, reason: str) -> None:
        pages.append(reason)

    async def scenario() -> None:
        watch = ShardWatch(store, None, None, "n1", SETTINGS, on_store_away=page)  # type: ignore[arg-type]
        await watch.run_once()
        await asyncio.sleep(answering_for)
        await watch.run_once()
        fail(store)
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(Exception):
                await watch.run_once()
            await asyncio.sleep(SETTINGS.interval)

    asyncio.run(scenario())
    return pages


def refuse(store: Store) -> None:
    store.failure = RedisConnectionError("Connection refused")


def test_a_store_away_longer_than_self_report_after_pages_once() -> None:
    [reason] = pages_after(Store(), 1.0, refuse)
    assert "coordination store is unreachable" in reason


def test_a_store_that_never_answers_counts_as_away() -> None:
    def hang(store: Store) -> None:
        store.hangs = True

    assert len(pages_after(Store(), 1.0, hang)) == 1


def test_a_blip_of_the_store_shorter_than_self_report_after_pages_nobody() -> None:
    # The primary has been down long enough: only the store's short absence holds the page.
    blip = SETTINGS.self_report_after / 3
    assert pages_after(Store(), blip, refuse, answering_for=SETTINGS.self_report_after) == []


def test_a_store_that_answers_something_unreadable_pages_nobody() -> None:
    def garbled(store: Store) -> None:
        store.failure = ValueError("1 validation error for Topology")

    assert pages_after(Store(), 1.0, garbled) == []
