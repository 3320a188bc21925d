"""What the API tells the controllers about writes that keep failing, shard by shard.

The API sees a shard that cannot take writes first: every enqueue to it answers 503 (no replica
confirmed it, primary unreachable, stale topology). `WriteFailureReporter` keeps, per shard, the
current run of such failures and writes it to the control store (`WRITE_FAILURES_KEY`, one field
per shard and API instance) at most once a second; the first success deletes it. The
controllers' shard watch reads them with `read_write_failures` as evidence to look at the shard,
never as a reason to act on it without their own checks.
Not for: deciding anything (lazarus_lite.shard_watch), or metrics (ratequeue.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WRITE_FAILURES_KEY = "rq:write_failures"
FLUSH_EVERY_SECONDS = 1.0
MAX_ERROR_CHARS = 300


@dataclass
class FailureRun:
    """Failed writes to one shard since the last success, as one API instance saw them."""

    shard: str
    since: float
    count: int
    last_error: str
    at: float
    api: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class WriteFailureReporter:
    def __init__(self, control: aioredis.Redis, api_id: str | None = None) -> None:
        self.control = control
        self.api_id = api_id or uuid.uuid4().hex[:12]
        self._runs: dict[str, FailureRun] = {}
        self._flushed_at: dict[str, float] = {}
        self._writes: set[asyncio.Task] = set()

    async def failed(self, shard: str, error: Exception) -> None:
        now = time.time()
        run = self._runs.get(shard)
        if run is None:
            run = self._runs[shard] = FailureRun(shard, now, 0, "", now, self.api_id)
        run.count += 1
        run.last_error = str(error)[:MAX_ERROR_CHARS]
        run.at = now
        if now - self._flushed_at.get(shard, 0.0) >= FLUSH_EVERY_SECONDS:
            self._flushed_at[shard] = now
            self._in_background(self._store(run.shard, run.to_json()))

    async def succeeded(self, shard: str) -> None:
        if self._runs.pop(shard, None) is None:
            return
        self._flushed_at.pop(shard, None)
        self._in_background(self._store(shard, None))

    async def drain(self) -> None:
        """Wait for the reports under way (tests, and a clean shutdown)."""
        await asyncio.gather(*self._writes, return_exceptions=True)

    def _in_background(self, write: Coroutine[Any, Any, None]) -> None:
        # Never in the request's path: a slow or unreachable control store must not delay the
        # answer to a write, failing or not.
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, shard: str, run_json: str | None) -> None:
        field = f"{shard}|{self.api_id}"
        try:
            if run_json is None:
                await self.control.hdel(WRITE_FAILURES_KEY, field)
            elif shard in self._runs:  # not cleared by a success in the meantime
                await self.control.hset(WRITE_FAILURES_KEY, field, run_json)
        except (RedisError, OSError) as error:  # the controllers see that outage themselves
            log.debug("cannot report failing writes to %s: %s", shard, error)


async def read_write_failures(control: aioredis.Redis) -> dict[str, list[FailureRun]]:
    """Every API instance's current run of failed writes, by shard (malformed fields skipped)."""
    runs: dict[str, list[FailureRun]] = {}
    for raw in (await control.hgetall(WRITE_FAILURES_KEY)).values():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            run = FailureRun(**json.loads(raw))
            runs.setdefault(run.shard, []).append(run)
    return runs
