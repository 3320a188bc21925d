"""The ledger of a load run, in the spirit of Jepsen's checkers: every enqueue attempt, every
acknowledgement, every delivery, and the verdicts computed from them (lost, duplicated,
availability per shard, rate conformance per number).

Not for: generating load (see `chaos.load`).
"""

from __future__ import annotations

import asyncio
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from ratequeue.rates import Rate


@dataclass(frozen=True)
class Attempt:
    at: float
    number: str
    shard: str
    ok: bool
    outcome: str  # acknowledged | duplicate | an error code
    latency: float


@dataclass(frozen=True)
class Delivery:
    at: float
    """When the consumer had it (the dequeue's answer arrived)."""
    id: str
    number: str
    attempt: int
    segments: int
    requested_at: float | None = None
    """When the dequeue that leased it was sent (None: not known)."""
    leased_at: float | None = None
    """When the queue leased it, as its answer says (None: an answer without it)."""

    @property
    def moment(self) -> float:
        """The time the rate check judges it at: the lease itself when the queue said it, else
        the dequeue's request, else its answer. Each delivery of a number is judged at the same
        kind of moment, never at one end of its dequeue against the other end of another's:
        a dequeue's latency (seconds, when it waited on a shard that does not answer) would
        then hide a real overshoot as readily as it would make one up."""
        if self.leased_at is not None:
            return self.leased_at
        return self.at if self.requested_at is None else self.requested_at


@dataclass(frozen=True)
class RateCheck:
    number: str
    deliveries: int
    max_early_seconds: float
    """How much earlier than its rate allows the worst delivery came (0: never early)."""


@dataclass
class FailedCalls:
    """The load's calls that failed one way (an HTTP status with its error code, or a transport
    error): how many, and when the first and the last of them were sent."""

    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0

    def add(self, at: float) -> None:
        self.first_at = at if self.count == 0 else min(self.first_at, at)
        self.last_at = max(self.last_at, at)
        self.count += 1


def describe_failed_calls(failures: dict[str, FailedCalls], since: float) -> str:
    """`{"503 shard_unavailable": ...}` as "503 shard_unavailable x12 (+3.1 to +9.8 s)", the
    times from `since` (the fault); "" when nothing failed."""
    return ", ".join(
        f"{kind} x{calls.count} ({calls.first_at - since:+.1f} to {calls.last_at - since:+.1f} s)"
        for kind, calls in sorted(failures.items(), key=lambda item: item[1].first_at)
    )


@dataclass
class Ledger:
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    """id -> (number, shard, time acknowledged)"""
    segments: dict[str, int] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    consumer_failures: list[str] = field(default_factory=list)
    """Why a consumer stopped before the run's end (an error it did not expect), if one did."""
    unanswered_enqueues: int = 0
    """Enqueue requests still awaiting their answer when producing stopped (cancelled: written
    or not, never acknowledged to this run; one that was written is delivered as foreign)."""
    dequeue_failures: dict[str, FailedCalls] = field(default_factory=dict)
    """Dequeues answered other than 200 (by status and error code: a refusal) or not answered
    at all (by transport error: what one of them leased returns to its queue only when the lease
    expires). The consumer takes either as "nothing now" and asks again; kept apart here, so a
    queue that was asked and refused reads differently from one that was never asked."""
    ack_failures: dict[str, FailedCalls] = field(default_factory=dict)
    """Acks answered other than 200 or not answered (their messages are delivered again after
    their lease: duplicates, not losses)."""
    slowest_dequeue: float = 0.0
    """Seconds the slowest dequeue took to answer (or to fail)."""

    # -- recording -------------------------------------------------------------------------
    def record_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def record_ack(
        self, message_id: str, number: str, shard: str, at: float, segments: int
    ) -> None:
        self.acknowledged.setdefault(message_id, (number, shard, at))
        self.segments[message_id] = segments

    def record_failed_dequeue(self, kind: str, sent_at: float) -> None:
        self.dequeue_failures.setdefault(kind, FailedCalls()).add(sent_at)

    def record_failed_ack(self, kind: str, sent_at: float) -> None:
        self.ack_failures.setdefault(kind, FailedCalls()).add(sent_at)

    @property
    def failed_dequeues(self) -> int:
        return sum(calls.count for calls in self.dequeue_failures.values())

    def record_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    def record_consumer_end(self, consumer: asyncio.Task) -> None:
        """A consumer task's done-callback: one that ended on an error is recorded, so what it
        would have delivered is not silently left waiting for the drain's end."""
        if not consumer.cancelled() and consumer.exception() is not None:
            self.consumer_failures.append(repr(consumer.exception()))

    # -- verdicts --------------------------------------------------------------------------
    @property
    def delivered_ids(self) -> set[str]:
        return {d.id for d in self.deliveries}

    def lost(self) -> set[str]:
        """Acknowledged and never delivered."""
        return set(self.acknowledged) - self.delivered_ids

    def foreign_ids(self) -> set[str]:
        """Delivered ids this run never acknowledged: an earlier run's messages that its drain
        did not see delivered, or messages whose acknowledgement this run never read."""
        return self.delivered_ids - set(self.acknowledged)

    def duplicates(self) -> int:
        """Deliveries beyond the first of each id (redeliveries after a lease or a failover)."""
        return len(self.deliveries) - len(self.delivered_ids)

    def availability(self, shard: str | None = None, since: float = 0.0,
                     until: float = float("inf")) -> float | None:  # fmt: skip
        """Share of enqueue attempts that succeeded, optionally for one shard and time span."""
        chosen = [
            a for a in self.attempts
            if (shard is None or a.shard == shard) and since <= a.at <= until
        ]  # fmt: skip
        if not chosen:
            return None
        return sum(a.ok for a in chosen) / len(chosen)

    def first_ack_after(self, moment: float, shard: str | None = None) -> float | None:
        """Time of the first successful enqueue attempt that started after `moment`."""
        times = [
            a.at + a.latency for a in self.attempts
            if a.ok and a.at >= moment and (shard is None or a.shard == shard)
        ]  # fmt: skip
        return min(times, default=None)

    def latency_percentiles(self, shard: str | None = None) -> dict[str, float]:
        values = sorted(a.latency for a in self.attempts
                        if a.ok and (shard is None or a.shard == shard))  # fmt: skip
        if not values:
            return {}
        if len(values) == 1:
            return {"p50": values[0], "p99": values[0]}
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return {"p50": cuts[49], "p99": cuts[98]}

    def rate_checks(self, rates: dict[str, Rate]) -> list[RateCheck]:
        """Replay each number's deliveries through GCRA at its rate, each at its `moment` (the
        queue's lease time): the worst lead over what the rate allows is the overshoot."""
        by_number: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.deliveries:
            by_number[delivery.number].append(delivery)
        checks = []
        for number, deliveries in sorted(by_number.items()):
            rate = rates[number]
            interval = 1.0 / rate.per_second
            tolerance = (rate.burst - 1) * interval
            tat = float("-inf")
            worst = 0.0
            for delivery in sorted(deliveries, key=lambda d: d.moment):
                tat = max(tat, delivery.moment)
                worst = max(worst, tat - delivery.moment - tolerance)
                tat += delivery.segments * interval
            checks.append(RateCheck(number, len(deliveries), worst))
        return checks
