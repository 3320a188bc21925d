"""Rate conformance, measured: over any window no number is delivered faster than its rate plus
its burst, while each still gets close to its full rate."""

from __future__ import annotations

import time

from chaos.ledger import Delivery, Ledger
from ratequeue.client import RatequeueClient
from ratequeue.rates import Rate

RATES = {
    "+14155550101": Rate(per_second=20, burst=1),
    "+14155550102": Rate(per_second=10, burst=5),
    "+18005550103": Rate(per_second=50, burst=10),
}
SECONDS = 2.0
# Deliveries are timed where the consumer sees them, a little after the shard granted them.
OBSERVATION_JITTER = 0.03


def max_in_any_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def consume(client: RatequeueClient, seconds: float) -> Ledger:
    ledger = Ledger()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        leased = client.dequeue(200, 30)
        now = time.monotonic()
        for m in leased:
            ledger.record_delivery(Delivery(now, m.id, m.number, m.attempt, 1))
        if leased:
            client.ack([m.receipt for m in leased])
        else:
            time.sleep(0.002)
    return ledger


def test_no_number_is_delivered_faster_than_its_rate_plus_burst(client: RatequeueClient) -> None:
    for number, rate in RATES.items():
        client.set_rate(number, rate)
        batch = [client.prepare(number, "x", f"{number[1:]}-{i}") for i in range(200)]
        assert all(not isinstance(r, Exception) for r in client.enqueue_many(batch))
    ledger = consume(client, SECONDS)

    for check in ledger.rate_checks(RATES):
        assert check.max_early_seconds <= OBSERVATION_JITTER, check
    for number, rate in RATES.items():
        times = sorted(d.at for d in ledger.deliveries if d.number == number)
        for window in (0.1, 0.25, 0.5, 1.0):
            allowed = rate.burst + rate.per_second * (window + OBSERVATION_JITTER)
            assert max_in_any_window(times, window) <= allowed, (number, window)
        # ...and the limiter does not starve it either: close to its full rate was delivered.
        assert len(times) >= rate.per_second * SECONDS * 0.8, (number, len(times))
