"""Locust load test of the ratequeue HTTP API: producers that enqueue, consumers that dequeue and
ack, over a pool of long codes, toll-free numbers and short codes.

Run headless against a running API, e.g. the local testbed:

    ratequeue-chaos testbed up --dir /tmp/lt
    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 20s \\
        --host "$(jq -r .api /tmp/lt/testbed.json)"
    ratequeue-chaos testbed down --dir /tmp/lt

or distributed (`--master` and any number of `--worker`s): the message tally is summed on the
master from every worker's reports, and at the end the master waits (up to --stop-timeout + 10 s)
for each worker's final tally, sent once its users finished their enqueues and retries.

Settings are locust command-line options (`locust -f loadtest/locustfile.py --help` lists them
with their defaults), each also read from the environment variable in brackets:
  --ratequeue-numbers [RATEQUEUE_NUMBERS]                 size of the number pool (200)
  --ratequeue-toll-free-share [RATEQUEUE_TOLL_FREE_SHARE] share of toll-free numbers (0.1)
  --ratequeue-short-code-share [RATEQUEUE_SHORT_CODE_SHARE] share of short codes (0.05)
  --ratequeue-seed [RATEQUEUE_SEED]                       seed of the pool (7)
  --ratequeue-producer-weight / --ratequeue-consumer-weight  relative numbers of users (3, 1)
  --ratequeue-producer-wait [RATEQUEUE_PRODUCER_WAIT]     seconds between enqueues (0)
  --ratequeue-dequeue-max, --ratequeue-lease-seconds      each dequeue's max and lease (100, 30)
  --ratequeue-consumer-idle [RATEQUEUE_CONSUMER_IDLE]     wait after an empty dequeue (0.2)
  --ratequeue-retry-seconds [RATEQUEUE_RETRY_SECONDS]     how long a 503 is retried (30)
  --ratequeue-summary [RATEQUEUE_SUMMARY]                 write the tally as JSON to this file

Every enqueue carries a fresh unique id. A 503 (the write is not yet durable, or the shard is
failing over) is retried with the SAME id, honouring Retry-After, for up to
--ratequeue-retry-seconds: the API then answers 201, or `duplicate` for a write that had landed,
and the message is counted once. Each retried attempt shows as its own row in locust's table and
is no failure; only a message still refused when its retries run out is. At the end, the
messages enqueued, dequeued and acknowledged (and the 503s retried) are logged by the master (or
the only process), since locust's own table counts requests, not messages.

Not for: checking that no message is lost (use a chaos experiment), or rate-limit conformance.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import STATE_MISSING, STATE_STOPPED, MasterRunner, WorkerRunner

log = logging.getLogger("ratequeue.loadtest")

TALLY_KEY = "ratequeue_tally"  # the tally's entry in a worker's report to the master
# Custom messages at the end of a distributed run: the master asks every worker to stop its
# users (each finishes its enqueue and its retries, up to --stop-timeout), and each worker answers
# with what it counted since its last report.
STOP_AND_TALLY = "ratequeue_stop_and_tally"
TALLY_FINAL = "ratequeue_tally_final"
FINAL_TALLY_GRACE = 10.0  # seconds past --stop-timeout the master waits for the final tallies
ENQUEUE = "enqueue /v1/numbers/[number]/messages"
ENQUEUE_RETRIED = "enqueue /v1/numbers/[number]/messages (503, retried with the same id)"
ENQUEUE_BATCH = "enqueue /v1/messages:batch"
ENQUEUE_BATCH_RETRIED = "enqueue /v1/messages:batch (503 items, retried with the same ids)"
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 2.0


def _bounded(kind: type, low: float, high: float) -> Any:
    """An argparse type: a `kind` (int or float) between `low` and `high`, or an error that
    says so (argparse names the option)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be between {low:g} and {high:g}")
        return value

    return parse


# (option, environment variable, type, default, help)
OPTIONS: list[tuple[str, str, Any, Any, str]] = [
    ("numbers", "RATEQUEUE_NUMBERS", _bounded(int, 1, 20_000), 200, "size of the number pool"),
    ("toll-free-share", "RATEQUEUE_TOLL_FREE_SHARE", _bounded(float, 0, 1), 0.1,
     "share of toll-free numbers (+1800555xxxx)"),
    ("short-code-share", "RATEQUEUE_SHORT_CODE_SHARE", _bounded(float, 0, 1), 0.05,
     "share of short codes (5-6 digits); the rest are long codes (+1415555xxxx)"),
    ("seed", "RATEQUEUE_SEED", _bounded(int, 0, 2**31), 7,
     "seed of the pool (the same pool on every run and worker)"),
    ("producer-weight", "RATEQUEUE_PRODUCER_WEIGHT", _bounded(int, 0, 1000), 3,
     "relative number of Producer users"),
    ("consumer-weight", "RATEQUEUE_CONSUMER_WEIGHT", _bounded(int, 0, 1000), 1,
     "relative number of Consumer users"),
    ("producer-wait", "RATEQUEUE_PRODUCER_WAIT", _bounded(float, 0, 3600), 0.0,
     "seconds a producer waits between enqueues"),
    ("batch", "RATEQUEUE_BATCH", _bounded(int, 0, 100_000), 0,
     "messages per producer request: 0 sends each on its own (POST /v1/numbers/{n}/messages), "
     "more sends that many in one POST /v1/messages:batch (at most the API's max_batch)"),
    ("dequeue-max", "RATEQUEUE_DEQUEUE_MAX", _bounded(int, 1, 1000), 100,
     "`max` of each dequeue"),
    ("lease-seconds", "RATEQUEUE_LEASE_SECONDS", _bounded(float, 0.001, 3600), 30.0,
     "`lease_seconds` of each dequeue"),
    ("consumer-idle", "RATEQUEUE_CONSUMER_IDLE", _bounded(float, 0, 60), 0.2,
     "seconds a consumer waits after an empty dequeue"),
    ("retry-seconds", "RATEQUEUE_RETRY_SECONDS", _bounded(float, 0, 3600), 30.0,
     "how long an enqueue answered 503 is retried with the same id"),
    ("summary", "RATEQUEUE_SUMMARY", str, "", "write the message tally as JSON to this file"),
]  # fmt: skip


def _naming_variable(kind: Any, env_var: str) -> Any:
    """`kind`, whose refusal also names `env_var`: argparse names only the option, though the
    value may have come from the variable."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except argparse.ArgumentTypeError as error:
            message = f"{error} (given as the option or as {env_var})"
            raise argparse.ArgumentTypeError(message) from None

    return parse


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    for name, env_var, kind, default, text in OPTIONS:
        parser.add_argument(f"--ratequeue-{name}", type=_naming_variable(kind, env_var),
                            default=default, env_var=env_var,
                            help=f"{text} [default: {default}]")  # fmt: skip


@dataclass
class Settings:
    """The options as the users read them, set at test start on every process (a worker gets
    the master's options then, not before)."""

    pool: list[str] = field(default_factory=list)
    producer_wait: float = 0.0
    batch: int = 0
    dequeue_max: int = 100
    lease_seconds: float = 30.0
    consumer_idle: float = 0.2
    retry_seconds: float = 30.0


SETTINGS = Settings()


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


class Tally:
    """Messages (not requests) moved, and the 503s retried. Each worker sends what it counted
    since its last report with its stats (`take`); the master adds the reports up (`add`)."""

    FIELDS = ("enqueued", "dequeued", "acked", "retried")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.FIELDS, 0)
        self.started = time.monotonic()

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                if name in self.counts:
                    self.counts[name] += int(count)

    def take(self) -> dict[str, int]:
        """The counts so far, and zero from now on (a report carries each count once)."""
        with self.lock:
            taken, self.counts = self.counts, dict.fromkeys(self.FIELDS, 0)
        return taken


TALLY = Tally()


def error_text(response: Any) -> str:
    """`status code: error code` from the API's JSON error body, or the status code alone."""
    try:
        code = response.json()["error"]["code"]
    except Exception:
        code = ""
    return f"{response.status_code} {code}".strip()


def new_message() -> dict[str, Any]:
    """A message on a random number of the pool, with a fresh id and a 20-character text."""
    text = f"Your code is {random.randrange(10**6):06d}."  # one segment
    return {"number": random.choice(SETTINGS.pool), "id": uuid.uuid4().hex, "body": {"text": text}}


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


def retry_after(response: Any, backoff: float) -> float:
    """The API's Retry-After (seconds) when it gives one, else `backoff`; at most MAX_BACKOFF."""
    try:
        return min(MAX_BACKOFF, max(0.0, float(response.headers.get("Retry-After"))))
    except (TypeError, ValueError):
        return backoff


class Producer(FastHttpUser):
    """Enqueues one message at a time on a random number of the pool, or --ratequeue-batch of
    them per request, retrying a 503 (a batch: its 503 items) with the same id."""

    weight = 3

    def wait_time(self) -> float:
        return SETTINGS.producer_wait

    @task
    def enqueue(self) -> None:
        if SETTINGS.batch:
            self.enqueue_batch()
            return
        payload = new_message()
        number = payload.pop("number")
        deadline = time.monotonic() + SETTINGS.retry_seconds
        backoff = FIRST_BACKOFF
        while True:
            with self.client.post(
                f"/v1/numbers/{number}/messages", json=payload, name=ENQUEUE, catch_response=True
            ) as response:
                if response.status_code == 201:
                    response.success()
                    TALLY.add(enqueued=1)  # a duplicate is the same message: counted once
                    return
                if response.status_code != 503 or time.monotonic() >= deadline:
                    # 429 (queue full), 4xx (bad input), or a 503 past the retry time.
                    response.failure(error_text(response))
                    return
                # Not a failure: the same id is sent again (its own row in locust's table).
                response.request_meta["name"] = ENQUEUE_RETRIED
                response.success()
                pause = retry_after(response, backoff)
            TALLY.add(retried=1)
            gevent.sleep(pause)
            backoff = min(MAX_BACKOFF, backoff * 2)

    def enqueue_batch(self) -> None:
        messages = [new_message() for _ in range(SETTINGS.batch)]
        deadline = time.monotonic() + SETTINGS.retry_seconds
        backoff = FIRST_BACKOFF
        name = ENQUEUE_BATCH
        while True:
            with self.client.post("/v1/messages:batch", json={"messages": messages}, name=name,
                                  catch_response=True) as response:  # fmt: skip
                statuses = answered_items(response, "results", "status")
                if statuses is None:
                    return
                TALLY.add(enqueued=statuses.count(201))
                retry = [m for m, status in zip(messages, statuses, strict=True) if status == 503]
                refused = len(statuses) - statuses.count(201) - len(retry)
                if refused or (retry and time.monotonic() >= deadline):
                    failed = refused + len(retry)
                    response.failure(f"{failed} of {len(statuses)} messages not acknowledged")
                    return
                response.success()
                if not retry:
                    return
                pause = retry_after(response, backoff)
            messages, name = retry, ENQUEUE_BATCH_RETRIED
            TALLY.add(retried=len(retry))
            gevent.sleep(pause)
            backoff = min(MAX_BACKOFF, backoff * 2)


class Consumer(FastHttpUser):
    """Leases up to --ratequeue-dequeue-max due messages and acks them all."""

    weight = 1
    wait_time = between(0, 0.01)

    @task
    def dequeue_and_ack(self) -> None:
        with self.client.post(
            "/v1/messages:dequeue",
            json={"max": SETTINGS.dequeue_max, "lease_seconds": SETTINGS.lease_seconds},
            name="dequeue /v1/messages:dequeue",
            catch_response=True,
        ) as response:
            receipts = answered_items(response, "messages", "receipt")
            if receipts is None:
                return
            response.success()
        if not receipts:
            gevent.sleep(SETTINGS.consumer_idle)  # nothing is due yet: the rates hold it back
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


_environment: Environment | None = None  # for the `quit` event, which is not given it


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _environment
    _environment = environment
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # a worker gets the master's options at test start
    if options.ratequeue_toll_free_share + options.ratequeue_short_code_share > 1:
        raise SystemExit(
            "--ratequeue-toll-free-share + --ratequeue-short-code-share must be at most 1"
        )
    # The master (or the only process) splits the users between the classes.
    Producer.weight = options.ratequeue_producer_weight
    Consumer.weight = options.ratequeue_consumer_weight


@events.test_start.add_listener
def _on_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    SETTINGS.pool = number_pool(
        options.ratequeue_numbers,
        options.ratequeue_toll_free_share,
        options.ratequeue_short_code_share,
        options.ratequeue_seed,
    )
    SETTINGS.producer_wait = options.ratequeue_producer_wait
    SETTINGS.batch = options.ratequeue_batch
    SETTINGS.dequeue_max = options.ratequeue_dequeue_max
    SETTINGS.lease_seconds = options.ratequeue_lease_seconds
    SETTINGS.consumer_idle = options.ratequeue_consumer_idle
    SETTINGS.retry_seconds = options.ratequeue_retry_seconds
    TALLY.started = time.monotonic()
    pool = SETTINGS.pool
    kinds = {
        "long codes": sum(1 for n in pool if n.startswith("+1415")),
        "toll-free": sum(1 for n in pool if n.startswith("+1800")),
        "short codes": sum(1 for n in pool if not n.startswith("+")),
    }
    log.info("number pool: %d numbers (%s)", len(pool),
             ", ".join(f"{v} {k}" for k, v in kinds.items()))  # fmt: skip


@events.report_to_master.add_listener
def _report_tally(client_id: str, data: dict[str, Any]) -> None:
    data[TALLY_KEY] = TALLY.take()


@events.worker_report.add_listener
def _add_worker_tally(client_id: str, data: dict[str, Any]) -> None:
    TALLY.add(**data.get(TALLY_KEY, {}))


class FinalTallies:
    """The master's side of the end of a distributed run. Left to itself, a headless master quits
    its workers and stops listening half a second later, while each worker is still letting its
    users finish (a 503 retried for up to --ratequeue-retry-seconds): the counts of those last
    enqueues would arrive after the summary was written, or never. So when the master's test
    stops, it asks each worker to stop its users and send its final tally, and waits for them
    all (at most --stop-timeout plus FINAL_TALLY_GRACE seconds) before locust quits the workers."""

    def __init__(self) -> None:
        self.received: set[str] = set()

    def start(self) -> None:
        self.received.clear()

    def add(self, environment: Environment, msg: Any) -> None:
        TALLY.add(**(msg.data or {}))
        self.received.add(msg.node_id)

    def wait(self, runner: MasterRunner, stop_timeout: float) -> None:
        workers = {client.id for client in runner.clients.all if client.state != STATE_MISSING}
        for worker in workers - self.received:
            runner.send_message(STOP_AND_TALLY, None, client_id=worker)
        deadline = time.monotonic() + stop_timeout + FINAL_TALLY_GRACE
        while not workers <= self.received:
            if time.monotonic() >= deadline:
                missing = ", ".join(sorted(workers - self.received))
                log.warning("no final message tally from worker(s) %s: the tally is short", missing)
                return
            gevent.sleep(0.1)


FINAL_TALLIES = FinalTallies()


def _stop_and_send_tally(environment: Environment, msg: Any) -> None:
    """A worker asked by the master for its final tally: its users finish their tasks, and the
    test_stop listener sends the tally; a worker already stopped sends it at once."""
    runner = environment.runner
    assert runner is not None
    if runner.state == STATE_STOPPED:
        runner.send_message(TALLY_FINAL, TALLY.take())
    else:
        runner.stop()


@events.init.add_listener
def _register_tally_messages(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(TALLY_FINAL, FINAL_TALLIES.add)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(STOP_AND_TALLY, _stop_and_send_tally)


@events.test_start.add_listener
def _forget_final_tallies(environment: Environment, **_: Any) -> None:
    FINAL_TALLIES.start()


@events.test_stop.add_listener
def _collect_final_tallies(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(TALLY_FINAL, TALLY.take())  # its users have finished their tasks
    elif isinstance(runner, MasterRunner):
        FINAL_TALLIES.wait(runner, environment.stop_timeout or 0.0)


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    # After the workers' final tallies (see FinalTallies), so the sum is whole.
    environment = _environment
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    seconds = max(1e-9, time.monotonic() - TALLY.started)
    counts = TALLY.take()
    log.info(
        "messages in %.1f s: enqueued %d (%.0f/s), dequeued %d (%.0f/s), acked %d (%.0f/s); "
        "503s retried with the same id: %d",
        seconds, counts["enqueued"], counts["enqueued"] / seconds, counts["dequeued"],
        counts["dequeued"] / seconds, counts["acked"], counts["acked"] / seconds,
        counts["retried"],
    )  # fmt: skip
    summary = environment.parsed_options.ratequeue_summary if environment.parsed_options else ""
    if summary:
        Path(summary).write_text(json.dumps({**counts, "seconds": round(seconds, 3)}))
