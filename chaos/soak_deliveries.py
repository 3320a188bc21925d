"""Acknowledged messages a soak cycle did not see delivered, carried to the cycles after it.

A run's drain waits a bounded time (`drain_seconds`) for every acknowledged message; what is
still queued or leased then stays in the queues, and the next cycle's consumers deliver it and
record its id as foreign to their own run (`Ledger.foreign_ids`). Judged per run alone, such
a message counts as lost where it was only late (staging soak run B, cycle 6: 46 of 92 not
delivered within the drain, gone from the queues afterwards; cycle 7 delivered 72 ids it had
not acknowledged, where other cycles deliver 0-11). Here the ids a cycle left undelivered are
matched against the later cycles' foreign deliveries and a final drain after the last cycle;
what none of them delivered is a miss, "not delivered within the final drain" (lost, or not
yet delivered when the drain's time ran out: the drain cannot tell them apart).

Not for: judging one run (its `acknowledged_lost` hypothesis does, within its drain) or
generating load (`chaos.load`).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

# The lease of the final drain's dequeues: short, so what a lost answer leased comes back soon.
FINAL_DRAIN_LEASE_SECONDS = 5.0


@dataclass
class Undelivered:
    """The acknowledged ids earlier cycles did not see delivered, each with its cycle."""

    waiting: dict[str, int] = field(default_factory=dict)

    def left_by(self, cycle: int, ids: Iterable[str]) -> None:
        for message_id in ids:
            self.waiting.setdefault(message_id, cycle)

    def delivered(self, ids: Iterable[str]) -> dict[int, int]:
        """Take delivered ids out of the waiting ones; how many of each cycle's were among them."""
        late: Counter[int] = Counter()
        for message_id in ids:
            cycle = self.waiting.pop(message_id, None)
            if cycle is not None:
                late[cycle] += 1
        return dict(sorted(late.items()))

    def by_cycle(self) -> dict[int, int]:
        """How many ids each cycle left that are still waiting."""
        return dict(sorted(Counter(self.waiting.values()).items()))


def describe_counts(counts: dict[int, int]) -> str:
    """`{6: 46, 9: 1}` as "46 of cycle 6, 1 of cycle 9"."""
    return ", ".join(f"{count} of cycle {cycle}" for cycle, count in counts.items())


def drain_leftovers(api: str, undelivered: Undelivered, timeout: float) -> dict[int, int]:
    """Consume what the queues still hold (dequeue, ack) until no earlier cycle's id is waiting
    or `timeout` passes; returns how many of each cycle's were delivered."""
    delivered: dict[int, int] = Counter()
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api, timeout=10) as http:
        while undelivered.waiting and time.monotonic() < deadline:
            try:
                answer = http.post(
                    "/v1/messages:dequeue",
                    json={"max": 1000, "lease_seconds": FINAL_DRAIN_LEASE_SECONDS},
                )
                messages = answer.json().get("messages", []) if answer.status_code == 200 else []
            except (httpx.HTTPError, ValueError):
                messages = []
            if not messages:
                time.sleep(0.2)
                continue
            delivered.update(undelivered.delivered(m["id"] for m in messages))
            # Delivered all the same if the ack fails: its leases expire, the queue has them again.
            with contextlib.suppress(httpx.HTTPError):
                http.post("/v1/messages:ack", json={"receipts": [m["receipt"] for m in messages]})
    return dict(sorted(delivered.items()))
