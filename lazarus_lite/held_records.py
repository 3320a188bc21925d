"""Decisions a controller node made while the record log could not take them (the coordination
store, or the Redis that keeps the record log, unreachable): kept in this node's memory, oldest
first, and written to the audit trail and the escalations stream once the log answers again, so
an escalation made during an outage is visible after it like any other.

They are held in memory only: a node that dies while holding them loses them (the pages they
sent are the record then). At most `limit` are held; beyond that the oldest is dropped, with a
log line, rather than letting a long outage grow the node without bound.

Not for: making decisions (`decisions`), or anything that decides a failover (nothing reads
these records to act: see `coordination`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from lazarus_lite.audit import AuditLog, AuditRecord
from lazarus_lite.coordination.interface import RecordLog

log = logging.getLogger(__name__)


class HeldRecords:
    """Escalations waiting for the record log, written in the order they were decided."""

    def __init__(self, node_id: str, limit: int = 1000) -> None:
        self.node_id = node_id
        self._held: deque[AuditRecord] = deque()
        self.limit = limit
        # Two writers (an escalation's own attempt, the periodic loop) would otherwise both
        # write the oldest record and both pop it: one record twice, the next never.
        self._writing = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, record: AuditRecord) -> None:
        if len(self._held) >= self.limit:
            dropped = self._held.popleft()
            log.error("%s: dropped the held record of event %s (%s held at most)",
                      self.node_id, dropped.event_id, self.limit)  # fmt: skip
        self._held.append(record)

    async def write(self, audit: AuditLog, records: RecordLog) -> int:
        """Write what is held, oldest first, until the log fails; returns how many were
        written. A record whose write failed stays held (a retry saves the same audit key
        again, so a half-written one is completed, not doubled). One writer at a time."""
        written = 0
        async with self._writing:
            while self._held:
                record = self._held[0]
                try:
                    await audit.save(record)
                    await records.append_escalation(record.event_id, record.reason, self.node_id)
                except Exception as error:  # whatever the backend raises: still away, try later
                    log.info("%s: %d held records wait for the record log: %s",
                             self.node_id, len(self._held), error)  # fmt: skip
                    break
                # `hold` may have dropped it (the limit) while it was being written.
                if self._held and self._held[0] is record:
                    self._held.popleft()
                written += 1
        if written:
            log.warning("%s: wrote %d records held while the store was unreachable",
                        self.node_id, written)  # fmt: skip
        return written
