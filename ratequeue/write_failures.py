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

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass

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
            await self._store(run)

    async def succeeded(self, shard: str) -> None:
        if self._runs.pop(shard, None) is None:
            return
        self._flushed_at.pop(shard, None)
        with contextlib.suppress(RedisError, OSError):
            await self.control.hdel(WRITE_FAILURES_KEY, f"{shard}|{self.api_id}")

    async def _store(self, run: FailureRun) -> None:
        # The report must never make a failing write worse: a control store that is down too is
        # only logged (the controllers see that outage themselves).
        try:
            await self.control.hset(WRITE_FAILURES_KEY, f"{run.shard}|{self.api_id}", run.to_json())
        except (RedisError, OSError) as error:
            log.debug("cannot report failing writes to %s: %s", run.shard, error)


async def read_write_failures(control: aioredis.Redis) -> dict[str, list[FailureRun]]:
    """Every API instance's current run of failed writes, by shard (malformed fields skipped)."""
    runs: dict[str, list[FailureRun]] = {}
    for raw in (await control.hgetall(WRITE_FAILURES_KEY)).values():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            run = FailureRun(**json.loads(raw))
            runs.setdefault(run.shard, []).append(run)
    return runs
