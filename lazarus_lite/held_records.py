"""The record log as a controller node writes it: written behind while the log cannot take
writes (the Redis that keeps it unreachable: the whole store on the Redis backend, only the
record log's Redis on etcd), so a decision never waits on, or fails for, a log that is away.

`HeldRecordLog` wraps the node's `RecordLog`. Each write (an audit record saved, an escalation
or a shadow decision appended) goes to the log at once, unless writes are held already; one
the log refuses as unreachable, or does not answer within `direct_timeout` (on etcd; on the
Redis store, whose log is the store itself, within the connection's own timeout, as before), is
held in this node's memory instead. From then on every write is held behind it, so the log
receives them in the order they were made; `write_held` (the node's periodic writer,
`background.write_held_records`) writes them oldest first once the log answers. A held audit
record is read back from memory (`audit`), so a decision made while the log is away can be
amended (its workflow's end, a page's deadline) before the log has it.

Each write is idempotent but one: an audit record is saved under its event id, an escalation
is appended once per event; a shadow decision whose first write timed out after the log took
it is listed twice.

They are held in memory only: a node that dies while holding them loses them (the pages they
sent are the record then). At most `limit` writes are held; beyond that the oldest is dropped,
with a log line, rather than letting a long outage grow the node without bound. Reads other
than a held record's (the audit listing, shadow decisions, write failures) go to the log and
raise while it is away.

Not for: making decisions (`decisions`), or anything that decides a failover (nothing reads
these records to act: see `coordination`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from lazarus_lite.coordination.interface import RecordLog
from ratequeue.write_failures import FailureRun

log = logging.getLogger(__name__)

# What the log raises when it is away (the Redis record log of both backends). Anything else
# is a bug or bad data, and is raised to the caller, not held.
LOG_UNREACHABLE: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)

# How long a write may wait for the log before it is held instead (on etcd, where decisions go
# on without the log): a decision saves its record three times or more, and a paused log would
# otherwise hold each save for the socket timeout. A held record is invisible to the other
# nodes until written: they wait on its incident meanwhile (`incidents`).
DIRECT_WRITE_TIMEOUT = 1.0


@dataclass(frozen=True)
class HeldWrite:
    """One write the log has not taken yet."""

    event_id: str | None
    apply: Callable[[RecordLog], Awaitable[None]]
    audit_json: str | None = None  # the record, for a saved audit record (read back)


class HeldRecordLog:
    """A `RecordLog` whose writes are held, in order, while the log underneath is away."""

    def __init__(
        self,
        records: RecordLog,
        node_id: str,
        *,
        limit: int = 1000,
        direct_timeout: float | None = DIRECT_WRITE_TIMEOUT,
    ) -> None:
        self.records = records
        self.node_id = node_id
        self.limit = limit
        self.direct_timeout = direct_timeout
        self._held: deque[HeldWrite] = deque()
        # Two writers (the periodic loop, a test) would otherwise both write the oldest write
        # and both pop it: one write twice, the next never.
        self._writing = asyncio.Lock()

    def __len__(self) -> int:
        """How many writes are held."""
        return len(self._held)

    @property
    def held_events(self) -> list[str]:
        """The events whose records or escalations are held, in the order first held."""
        return list(dict.fromkeys(w.event_id for w in self._held if w.event_id is not None))

    # -- writes ------------------------------------------------------------------------------
    async def save_audit(self, event_id: str, record_json: str, received_at: float) -> None:
        async def save(records: RecordLog) -> None:
            await records.save_audit(event_id, record_json, received_at)

        await self._write(HeldWrite(event_id, save, record_json))

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        async def append(records: RecordLog) -> None:
            await records.append_escalation(event_id, reason, node_id)

        await self._write(HeldWrite(event_id, append))

    async def append_shadow_decision(self, decision: dict[str, Any]) -> None:
        async def append(records: RecordLog) -> None:
            await records.append_shadow_decision(decision)

        await self._write(HeldWrite(None, append))

    async def _write(self, write: HeldWrite) -> None:
        if self._held:  # the log is away, or being caught up: behind the writes before it
            self._hold(write)
            return
        try:
            if self.direct_timeout is None:  # waited for as long as the log's own timeout
                await write.apply(self.records)
            else:
                await asyncio.wait_for(write.apply(self.records), self.direct_timeout)
        except LOG_UNREACHABLE as error:
            log.warning("%s: the record log is unreachable (%s): its writes are held until it "
                        "answers", self.node_id, error or type(error).__name__)  # fmt: skip
            self._hold(write)

    def _hold(self, write: HeldWrite) -> None:
        if len(self._held) >= self.limit:
            dropped = self._held.popleft()
            log.error("%s: dropped a held write of the record log (event %s; %s held at most)",
                      self.node_id, dropped.event_id, self.limit)  # fmt: skip
        self._held.append(write)

    async def write_held(self) -> int:
        """Write what is held, oldest first, until the log fails; returns how many writes were
        written. A write that failed stays held (written again, it completes a half-written
        one rather than doubling it). One writer at a time."""
        written = 0
        async with self._writing:
            while self._held:
                write = self._held[0]
                try:
                    await write.apply(self.records)
                except LOG_UNREACHABLE as error:  # still away: the next round tries again
                    log.info("%s: %d held writes wait for the record log: %s",
                             self.node_id, len(self._held), error)  # fmt: skip
                    break
                # `_hold` may have dropped it (the limit) while it was being written.
                if self._held and self._held[0] is write:
                    self._held.popleft()
                written += 1
        if written:
            log.warning("%s: wrote %d records held while the record log was unreachable",
                        self.node_id, written)  # fmt: skip
        return written

    # -- reads -------------------------------------------------------------------------------
    async def audit(self, event_id: str) -> str | None:
        """The record as this node last saved it when that save is held, else the log's."""
        for write in reversed(self._held):
            if write.event_id == event_id and write.audit_json is not None:
                return write.audit_json
        return await self.records.audit(event_id)

    async def newest_audits(self, since: float | None, count: int) -> list[str]:
        return await self.records.newest_audits(since, count)

    async def shadow_decisions(self, limit: int) -> list[dict[str, Any]]:
        return await self.records.shadow_decisions(limit)

    async def write_failures(self) -> dict[str, list[FailureRun]]:
        return await self.records.write_failures()
