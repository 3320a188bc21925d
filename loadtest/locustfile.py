"""Locust load test of the ratequeue HTTP API: producers that enqueue, consumers that dequeue and
ack, over a pool of long codes, toll-free numbers and short codes.

Run headless against a running API, e.g. the local testbed:

    chaos testbed up --dir /tmp/lt
    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 20s \\
        --host "$(jq -r .api /tmp/lt/testbed.json)"
    chaos testbed down --dir /tmp/lt

Configured by environment variables (defaults in brackets):
  RATEQUEUE_NUMBERS [200]              size of the number pool
  RATEQUEUE_TOLL_FREE_SHARE [0.1]      share of toll-free numbers (+1800555xxxx)
  RATEQUEUE_SHORT_CODE_SHARE [0.05]    share of short codes (5-6 digits); the rest are long codes
                                       (+1415555xxxx)
  RATEQUEUE_SEED [7]                   seed of the pool (the same pool on every run and worker)
  RATEQUEUE_PRODUCER_WEIGHT [3]        relative number of Producer users
  RATEQUEUE_CONSUMER_WEIGHT [1]        relative number of Consumer users
  RATEQUEUE_PRODUCER_WAIT [0]          seconds a producer waits between enqueues
  RATEQUEUE_BATCH [0]                  messages per producer request: 0 sends each on its own
                                       (POST /v1/numbers/{n}/messages), more sends that many in
                                       one POST /v1/messages:batch (at most the API's max_batch)
  RATEQUEUE_DEQUEUE_MAX [100]          `max` of each dequeue
  RATEQUEUE_LEASE_SECONDS [30]         `lease_seconds` of each dequeue
  RATEQUEUE_CONSUMER_IDLE [0.2]        seconds a consumer waits after an empty dequeue

Every enqueue carries a fresh unique id. A 201 is a success; anything else, including the 503 the
API answers while a write is not yet durable, is a failure (this file does not retry: the chaos
load generator, `chaos.load`, is the one that retries with the same id and keeps a ledger). At the
end, the messages enqueued, dequeued and acknowledged per second are logged, since locust's own
table counts dequeue requests, not messages.

Not for: checking that no message is lost (use a chaos experiment), or rate-limit conformance.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment

log = logging.getLogger("ratequeue.loadtest")


def _env(name: str, default: float, *, low: float, high: float, integer: bool = False) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return int(default) if integer else default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SystemExit(f"{name}={raw!r}: expected {kind}") from None
    if not low <= value <= high:
        raise SystemExit(f"{name}={raw!r}: must be between {low:g} and {high:g}")
    return value


NUMBERS: int = _env("RATEQUEUE_NUMBERS", 200, low=1, high=20_000, integer=True)
TOLL_FREE_SHARE: float = _env("RATEQUEUE_TOLL_FREE_SHARE", 0.1, low=0, high=1)
SHORT_CODE_SHARE: float = _env("RATEQUEUE_SHORT_CODE_SHARE", 0.05, low=0, high=1)
SEED: int = _env("RATEQUEUE_SEED", 7, low=0, high=2**31, integer=True)
PRODUCER_WEIGHT: int = _env("RATEQUEUE_PRODUCER_WEIGHT", 3, low=0, high=1000, integer=True)
CONSUMER_WEIGHT: int = _env("RATEQUEUE_CONSUMER_WEIGHT", 1, low=0, high=1000, integer=True)
PRODUCER_WAIT: float = _env("RATEQUEUE_PRODUCER_WAIT", 0, low=0, high=3600)
BATCH: int = _env("RATEQUEUE_BATCH", 0, low=0, high=100_000, integer=True)
DEQUEUE_MAX: int = _env("RATEQUEUE_DEQUEUE_MAX", 100, low=1, high=1000, integer=True)
LEASE_SECONDS: float = _env("RATEQUEUE_LEASE_SECONDS", 30, low=0.001, high=3600)
CONSUMER_IDLE: float = _env("RATEQUEUE_CONSUMER_IDLE", 0.2, low=0, high=60)

if TOLL_FREE_SHARE + SHORT_CODE_SHARE > 1:
    raise SystemExit("RATEQUEUE_TOLL_FREE_SHARE + RATEQUEUE_SHORT_CODE_SHARE must be at most 1")


def number_pool(size: int, toll_free_share: float, short_code_share: float, seed: int) -> list[str]:
    """A deterministic mix: long codes +1415555xxxx, toll-free +1800555xxxx, short codes of five
    and six digits. At most 10,000 numbers of each kind exist in these ranges; beyond that the
    pool repeats numbers."""
    rng = random.Random(seed)
    pool = []
    for index in range(size):
        draw = rng.random()
        if draw < short_code_share:
            pool.append(str(20_000 + index) if index % 2 else str(300_000 + index))
        elif draw < short_code_share + toll_free_share:
            pool.append(f"+1800555{index % 10_000:04d}")
        else:
            pool.append(f"+1415555{index % 10_000:04d}")
    return pool


POOL = number_pool(NUMBERS, TOLL_FREE_SHARE, SHORT_CODE_SHARE, SEED)


class Tally:
    """Messages (not requests) moved, for the summary at the end of the run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enqueued = self.dequeued = self.acked = 0
        self.started = time.monotonic()

    def add(self, *, enqueued: int = 0, dequeued: int = 0, acked: int = 0) -> None:
        with self.lock:
            self.enqueued += enqueued
            self.dequeued += dequeued
            self.acked += acked


TALLY = Tally()


def error_text(response: Any) -> str:
    """`status code: error code` from the API's JSON error body, or the status code alone."""
    try:
        code = response.json()["error"]["code"]
    except Exception:
        code = ""
    return f"{response.status_code} {code}".strip()


def answered_items(response: Any, field: str, key: str) -> list[Any] | None:
    """`key` of each item of the 200 answer's `field` list; None once the response is marked
    failed (another status, or a body without that shape)."""
    if response.status_code != 200:
        response.failure(error_text(response))
        return None
    try:
        return [item[key] for item in response.json()[field]]
    except (ValueError, KeyError, TypeError) as error:
        response.failure(f"unexpected answer, no {field}[].{key}: {error!r}")
        return None


def new_message() -> dict[str, Any]:
    """A message on a random number of the pool, with a fresh id and a 20-character text."""
    text = f"Your code is {random.randrange(10**6):06d}."  # one segment
    return {"number": random.choice(POOL), "id": uuid.uuid4().hex, "body": {"text": text}}


class Producer(FastHttpUser):
    """Enqueues one message at a time on a random number of the pool, or RATEQUEUE_BATCH of them
    per request."""

    weight = PRODUCER_WEIGHT
    wait_time = constant(PRODUCER_WAIT)

    @task
    def enqueue(self) -> None:
        if BATCH:
            self.enqueue_batch()
            return
        message = new_message()
        number = message.pop("number")
        with self.client.post(
            f"/v1/numbers/{number}/messages",
            json=message,
            name="enqueue /v1/numbers/[number]/messages",
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                response.success()
                TALLY.add(enqueued=1)
            else:
                # 503 (not durable yet: the producer should retry with the same id), 429 (queue
                # full), 4xx (bad input): all count as failures here.
                response.failure(error_text(response))

    def enqueue_batch(self) -> None:
        messages = [new_message() for _ in range(BATCH)]
        with self.client.post(
            "/v1/messages:batch",
            json={"messages": messages},
            name="enqueue /v1/messages:batch",
            catch_response=True,
        ) as response:
            statuses = answered_items(response, "results", "status")
            if statuses is None:
                return
            TALLY.add(enqueued=statuses.count(201))
            refused = len(statuses) - statuses.count(201)
            if refused:
                response.failure(f"{refused} of {len(statuses)} messages not acknowledged")
            else:
                response.success()


class Consumer(FastHttpUser):
    """Leases up to RATEQUEUE_DEQUEUE_MAX due messages and acks them all."""

    weight = CONSUMER_WEIGHT
    wait_time = between(0, 0.01)

    @task
    def dequeue_and_ack(self) -> None:
        with self.client.post(
            "/v1/messages:dequeue",
            json={"max": DEQUEUE_MAX, "lease_seconds": LEASE_SECONDS},
            name="dequeue /v1/messages:dequeue",
            catch_response=True,
        ) as response:
            receipts = answered_items(response, "messages", "receipt")
            if receipts is None:
                return
            response.success()
        if not receipts:
            gevent.sleep(CONSUMER_IDLE)  # nothing is due yet: the numbers' rates hold it back
            return
        TALLY.add(dequeued=len(receipts))
        with self.client.post(
            "/v1/messages:ack",
            json={"receipts": receipts},
            name="ack /v1/messages:ack",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(error_text(response))
                return
            acked = int(response.json().get("acked", 0))
            TALLY.add(acked=acked)
            if acked != len(receipts):
                response.failure(f"acked {acked} of {len(receipts)} receipts (leases expired?)")
            else:
                response.success()


@events.test_start.add_listener
def _on_start(environment: Environment, **_: Any) -> None:
    TALLY.started = time.monotonic()
    kinds = {
        "long codes": sum(1 for n in POOL if n.startswith("+1415")),
        "toll-free": sum(1 for n in POOL if n.startswith("+1800")),
        "short codes": sum(1 for n in POOL if not n.startswith("+")),
    }
    log.info("number pool: %d numbers (%s)", len(POOL),
             ", ".join(f"{v} {k}" for k, v in kinds.items()))  # fmt: skip


@events.test_stop.add_listener
def _on_stop(environment: Environment, **_: Any) -> None:
    seconds = max(1e-9, time.monotonic() - TALLY.started)
    log.info(
        "messages in %.1f s: enqueued %d (%.0f/s), dequeued %d (%.0f/s), acked %d (%.0f/s)",
        seconds, TALLY.enqueued, TALLY.enqueued / seconds, TALLY.dequeued,
        TALLY.dequeued / seconds, TALLY.acked, TALLY.acked / seconds,
    )  # fmt: skip
