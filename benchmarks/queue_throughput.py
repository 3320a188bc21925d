"""Queue throughput and memory on one shard (a primary with one replica), run by hand.

Measures, in one run against real redis-server processes started here and stopped at the end:
  (a) the ceiling: raw pipelined LPUSH then RPOP with redis-py against the same primary, with
      the synchronous client on one connection and with the asyncio client (the one ratequeue
      uses) with several pipelines in flight; the faster of the two is the ceiling;
  (b) ratequeue through `AsyncRatequeueClient`: enqueue in batches, each acknowledged after
      `WAIT` confirms one replica, then dequeue + ack; and the ratio (b)/(a) (target >= 50 %);
  (c) dequeue + ack of a fixed count of messages with 1,000 and with 1,000,000 non-empty numbers
      (target: within 1.2x); the numbers are loaded by pipelined EVALSHA of the enqueue script
      without WAIT, then replication and an AOF rewrite are let to settle before measuring;
  (d) memory per queued message (`INFO memory` used_memory delta / messages, 20-character body;
      target <= 200 bytes).
The automatic AOF rewrite is turned off for the run (rewrites run between phases instead), so no
fork lands inside a timed phase. Rates are set far above what a shard serves, so rate limits
never hold a message back.

Prints a table (`--profile`: also where the primary's time goes, by command) and writes JSON to
benchmarks/results/<timestamp>.json. Run from the repository root:
`python -m benchmarks.queue_throughput [--quick]`. Not for: CI (timings depend on the machine
and on whatever else runs on it), multi-shard scaling, or the HTTP layer (see
loadtest/locustfile.py for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.cpu_hogs import cpu_hogs, every_core
from common.redis_processes import RedisProcess
from ratequeue.client import AsyncRatequeueClient, ClientRetryPolicy, ClientSettings, Enqueued
from ratequeue.local_cluster import LocalCluster, ShardNodes
from ratequeue.rates import DEFAULT_MAX_NUMBER_SEGMENTS, Rate
from ratequeue.scripts import READY_KEY
from ratequeue.shard import ENQUEUE_BATCH, OutgoingMessage, enqueue_batch_arguments
from ratequeue.topology import FENCE_KEY

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RAW_KEY = "bench:raw"
# Far above anything one shard can serve, so the rate limit never holds a message back and the
# figures measure the queue, not the carriers' rates.
UNLIMITED = Rate(per_second=100_000, burst=1_000_000)
LEASE_SECONDS = 600.0
TARGET_RATIO = 0.5
TARGET_SLOWDOWN = 1.2
TARGET_BYTES = 200

console = Console()


# -- figures -----------------------------------------------------------------------------------
@dataclass
class Phase:
    """One timed phase: `messages` moved in `seconds`; the CPU the primary, its replicas and this
    client spent on them; the latency of each call (a batch, a pipeline, a dequeue + ack)."""

    name: str
    messages: int
    seconds: float
    server_cpu_seconds: float
    replica_cpu_seconds: float
    client_cpu_seconds: float
    call_latencies_ms: list[float] = field(default_factory=list, repr=False)
    # command -> (calls, microseconds) on the primary, from INFO commandstats; commands that
    # scripts call are counted too, so this is where a script's time goes
    primary_commands: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    # msg/s in each tenth of the phase (by messages): their median shrugs off a burst of other
    # load on the machine better than the phase's overall rate does
    windows: list[float] = field(default_factory=list, repr=False)

    @property
    def median_window_rate(self) -> float:
        return statistics.median(self.windows) if self.windows else self.per_second

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def us_per_message(self, cpu_seconds: float) -> float:
        return 1e6 * cpu_seconds / self.messages if self.messages else 0.0

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.call_latencies_ms)
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 4),
            "messages_per_second": round(self.per_second, 1),
            "median_window_messages_per_second": (
                round(self.median_window_rate, 1) if self.windows else None
            ),
            "primary_cpu_us_per_message": round(self.us_per_message(self.server_cpu_seconds), 2),
            "replica_cpu_us_per_message": round(self.us_per_message(self.replica_cpu_seconds), 2),
            "client_cpu_us_per_message": round(self.us_per_message(self.client_cpu_seconds), 2),
            "calls": len(latencies),
            "call_latency_ms_p50": round(percentile(latencies, 0.50), 3),
            "call_latency_ms_p99": round(percentile(latencies, 0.99), 3),
            "primary_commands_per_message": self.commands_per_message(),
        }

    def commands_per_message(self) -> dict[str, dict[str, float]]:
        """Calls and microseconds per message of each command that took at least 0.05 µs per
        message on the primary, costliest first (`evalsha` includes the commands it called)."""
        rows = {
            name: {"calls": calls / self.messages, "us": usec / self.messages}
            for name, (calls, usec) in self.primary_commands.items()
            if self.messages and usec >= 0.05 * self.messages
        }
        return {
            name: {k: round(v, 3) for k, v in row.items()}
            for name, row in sorted(rows.items(), key=lambda item: -item[1]["us"])
        }


def window_rates(started: float, progress: list[tuple[float, int]], count: int = 10) -> list[float]:
    """Split the phase into `count` windows of about equal message counts (at call boundaries)
    and return the rate of each."""
    total = sum(messages for _, messages in progress)
    if len(progress) < count or total == 0:
        return []
    rates: list[float] = []
    window_start, moved, goal = started, 0, total / count
    for at, messages in progress:
        moved += messages
        if moved >= goal and at > window_start:
            rates.append(moved / (at - window_start))
            window_start, moved = at, 0
    return rates


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def combined(name: str, *phases: Phase) -> Phase:
    """The phases one after the other, as one pass of the same messages through the queue."""
    return Phase(
        name=name,
        messages=phases[0].messages,
        seconds=sum(p.seconds for p in phases),
        server_cpu_seconds=sum(p.server_cpu_seconds for p in phases),
        replica_cpu_seconds=sum(p.replica_cpu_seconds for p in phases),
        client_cpu_seconds=sum(p.client_cpu_seconds for p in phases),
    )


def node_cpu(conn: redis.Redis) -> float:
    """CPU seconds the node has used, all its threads."""
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_stats(conn: redis.Redis) -> dict[str, tuple[int, int]]:
    return {
        name.removeprefix("cmdstat_"): (int(row["calls"]), int(row["usec"]))
        for name, row in conn.info("commandstats").items()
    }


class Meter:
    """Wall time and the CPU of this process, the primary and its replicas over a `with` block."""

    def __init__(self, shard: ShardNodes) -> None:
        self.primary = shard.primary.client(timeout=10)
        self.replicas = [r.client(timeout=10) for r in shard.replicas]
        self.latencies: list[float] = []
        self.progress: list[tuple[float, int]] = []

    def _replica_cpu(self) -> float:
        return sum(node_cpu(conn) for conn in self.replicas)

    def __enter__(self) -> Meter:
        self._commands = command_stats(self.primary)
        self._server = node_cpu(self.primary)
        self._replica = self._replica_cpu()
        self._client = time.process_time()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.client_cpu = time.process_time() - self._client
        self.server_cpu = node_cpu(self.primary) - self._server
        self.replica_cpu = self._replica_cpu() - self._replica
        after = command_stats(self.primary)
        self.commands = {
            name: (calls - self._commands.get(name, (0, 0))[0],
                   usec - self._commands.get(name, (0, 0))[1])
            for name, (calls, usec) in after.items()
        }  # fmt: skip
        for conn in [self.primary, *self.replicas]:
            conn.close()

    def record(self, began: float, messages: int) -> None:
        """One call that started at `began` has just moved `messages` messages."""
        now = time.perf_counter()
        self.latencies.append(1000 * (now - began))
        self.progress.append((now, messages))

    def phase(self, name: str, messages: int) -> Phase:
        return Phase(name, messages, self.seconds, self.server_cpu, self.replica_cpu,
                     self.client_cpu, self.latencies, self.commands,
                     window_rates(self._started, self.progress))  # fmt: skip


def body_text(i: int) -> str:
    """A typical 20-character SMS body."""
    text = f"Your code is {i % 1_000_000:06d}."
    assert len(text) == 20
    return text


def chunk_sizes(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, count) pairs covering `total` in chunks of `size`."""
    for start in range(0, total, size):
        yield start, min(size, total - start)


async def run_workers(concurrency: int, worker: Callable[[], Awaitable[None]]) -> None:
    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- the shard ---------------------------------------------------------------------------------
def reset_shard(shard: ShardNodes) -> None:
    """Empty the shard (FLUSHALL) and fence it at epoch 1 again, as the topology says."""
    with shard.primary.client(timeout=60) as conn:
        conn.flushall()
        conn.set(FENCE_KEY, "1")
    settle(shard, rewrite=False)


def no_automatic_rewrites(shard: ShardNodes) -> None:
    """Turn off the automatic AOF rewrite on every node of the shard: its fork would land in
    whichever phase happened to double the AOF (on two cores a rewrite child takes one of them),
    so `settle` rewrites explicitly between phases instead."""
    for node in [shard.primary, *shard.replicas]:
        with node.client() as conn:
            conn.config_set("auto-aof-rewrite-percentage", 0)


def settle(shard: ShardNodes, *, rewrite: bool) -> None:
    """Wait until the replicas hold everything; with `rewrite`, also rewrite the AOF on every
    node and wait for it, so that no automatic rewrite (a fork) falls into a measurement."""
    with shard.primary.client(timeout=120) as conn:
        conn.incr("rq:barrier")  # WAIT waits for this connection's last write
        acked = int(conn.execute_command("WAIT", len(shard.replicas), 120_000))
        if acked < len(shard.replicas):
            raise RuntimeError(f"only {acked} of {len(shard.replicas)} replicas caught up")
    nodes = [shard.primary, *shard.replicas]
    if rewrite:
        for node in nodes:
            with node.client(timeout=10) as conn, contextlib.suppress(redis.ResponseError):
                conn.bgrewriteaof()  # refused if one runs already: then wait for that one
        deadline = time.monotonic() + 300
        for node in nodes:
            with node.client(timeout=10) as conn:
                while True:
                    info = conn.info("persistence")
                    if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{node.name}: AOF rewrite did not finish")
                    time.sleep(0.05)
    time.sleep(0.5)  # let the primary trim replication buffers the replicas no longer need


def used_memory(primary: RedisProcess) -> int:
    with primary.client() as conn:
        return int(conn.info("memory")["used_memory"])


def bulk_load(
    primary: RedisProcess, sequence: list[str], *, load_batch: int, depth: int = 4
) -> tuple[int, float]:
    """Queue one message on each entry of `sequence` (a number), in order, fast: pipelined
    EVALSHA of the enqueue script, `load_batch` messages per call, no WAIT. Every message
    carries the UNLIMITED rate as its number's default rate (stored per number like any default
    rate; no override is written). Returns (messages queued, seconds)."""
    queued = 0
    started = time.perf_counter()
    with primary.client(timeout=120) as conn:
        conn.script_load(ENQUEUE_BATCH.source)
        pipe = conn.pipeline(transaction=False)
        pending = 0

        def flush() -> int:
            ok = 0
            for codes, _ in pipe.execute():
                ok += codes.count(b"o")  # one letter per message, o for queued
            return ok

        for start, count in chunk_sizes(len(sequence), load_batch):
            messages = [
                OutgoingMessage(
                    uuid.uuid4().hex, sequence[i], 1, UNLIMITED, json.dumps(body_text(i))
                )
                for i in range(start, start + count)
            ]
            args = enqueue_batch_arguments(
                "1", messages, dedup_window_seconds=3600, max_queue_seconds=36_000,
                max_number_segments=DEFAULT_MAX_NUMBER_SEGMENTS,
            )  # fmt: skip
            pipe.execute_command("EVALSHA", ENQUEUE_BATCH.sha, 0, *args)
            pending += 1
            if pending == depth:
                queued += flush()
                pending = 0
        if pending:
            queued += flush()
    if queued != len(sequence):
        raise RuntimeError(f"bulk load queued {queued} of {len(sequence)} messages")
    return queued, time.perf_counter() - started


def load_sequence(numbers: list[str], measure: int) -> list[str]:
    """The numbers of the messages to load so that dequeuing `measure` messages leaves every
    number non-empty: then each dequeue takes the same path whatever the number count (the
    number is rescheduled, its queue is not deleted).

    Due numbers are served longest-waiting first and go to the back once served, so with
    `measure` = f * len(numbers) + r, the first r numbers in load order are served f + 1 times
    and the others f times. Each number gets f + 1 messages, the first r (plus a margin of a
    tenth of the numbers) one more. With 1,000,000 numbers and 200,000 messages that is 1.3
    million messages rather than 2 million."""
    full, rest = divmod(measure, len(numbers))
    extra = min(len(numbers), rest + len(numbers) // 10)
    return numbers * (full + 1) + numbers[:extra]


def long_codes(count: int) -> list[str]:
    return [f"+1415{i:07d}" for i in range(count)]


def short_codes(count: int) -> list[str]:
    if count > 990_000:
        raise typer.BadParameter("at most 990,000 short codes (5-6 digits) exist")
    return [str(10_000 + i) for i in range(count)]


# -- (a) the ceiling ---------------------------------------------------------------------------
def raw_sync(shard: ShardNodes, messages: int, batch: int) -> tuple[Phase, Phase]:
    """LPUSH every message, then RPOP them all: one command per message, `batch` commands per
    pipeline, on one connection of redis-py's synchronous client."""
    bodies = [body_text(i) for i in range(messages)]
    with shard.primary.client(timeout=30) as conn:
        conn.delete(RAW_KEY)
        with Meter(shard) as push:
            for start, count in chunk_sizes(messages, batch):
                began = time.perf_counter()
                pipe = conn.pipeline(transaction=False)
                for body in bodies[start : start + count]:
                    pipe.lpush(RAW_KEY, body)
                pipe.execute()
                push.record(began, count)
        popped = 0
        with Meter(shard) as pop:
            for _, count in chunk_sizes(messages, batch):
                began = time.perf_counter()
                pipe = conn.pipeline(transaction=False)
                for _ in range(count):
                    pipe.rpop(RAW_KEY)
                popped += sum(1 for r in pipe.execute() if r is not None)
                pop.record(began, count)
    if popped != messages:
        raise RuntimeError(f"raw RPOP returned {popped} of {messages} messages")
    return push.phase("raw LPUSH, sync", messages), pop.phase("raw RPOP, sync", messages)


async def raw_async(
    shard: ShardNodes, messages: int, batch: int, concurrency: int
) -> tuple[Phase, Phase]:
    """As `raw_sync`, with redis-py's asyncio client (the one ratequeue's client uses) and
    `concurrency` pipelines in flight."""
    bodies = [body_text(i) for i in range(messages)]
    primary = shard.primary
    conn = aioredis.Redis(host=primary.host, port=primary.port, max_connections=concurrency + 2)
    popped = 0
    try:
        await conn.delete(RAW_KEY)
        chunks = chunk_sizes(messages, batch)
        with Meter(shard) as push:

            async def pusher() -> None:
                for start, count in chunks:
                    began = time.perf_counter()
                    async with conn.pipeline(transaction=False) as pipe:
                        for body in bodies[start : start + count]:
                            pipe.lpush(RAW_KEY, body)
                        await pipe.execute()
                    push.record(began, count)

            await run_workers(concurrency, pusher)
        chunks = chunk_sizes(messages, batch)
        with Meter(shard) as pop:

            async def popper() -> None:
                nonlocal popped
                for _, count in chunks:
                    began = time.perf_counter()
                    async with conn.pipeline(transaction=False) as pipe:
                        for _ in range(count):
                            pipe.rpop(RAW_KEY)
                        results = await pipe.execute()
                    popped += sum(1 for r in results if r is not None)
                    pop.record(began, count)

            await run_workers(concurrency, popper)
    finally:
        await conn.aclose()
    if popped != messages:
        raise RuntimeError(f"raw RPOP returned {popped} of {messages} messages")
    return push.phase("raw LPUSH, asyncio", messages), pop.phase("raw RPOP, asyncio", messages)


# -- (b) ratequeue -----------------------------------------------------------------------------
def client_settings() -> ClientSettings:
    return ClientSettings(
        min_replicas=1, wait_timeout_ms=2000, retry=ClientRetryPolicy(deadline=10)
    )


async def enqueue_all(
    client: AsyncRatequeueClient,
    shard: ShardNodes,
    numbers: list[str],
    messages: int,
    batch: int,
    concurrency: int,
) -> tuple[Phase, float]:
    """Enqueue `messages` over `numbers` with `enqueue_many`, `batch` per call, `concurrency`
    calls in flight; every call returns once WAIT confirmed a replica. Returns the phase and the
    client's cost of preparing (validating, encoding) one message in microseconds, which is
    left out of the phase, as building the bodies is left out of the raw figures."""
    began = time.perf_counter()
    prepared = [client.prepare(numbers[i % len(numbers)], body_text(i)) for i in range(messages)]
    prepare_us = 1e6 * (time.perf_counter() - began) / messages
    chunks = chunk_sizes(messages, batch)
    refused: list[object] = []
    with Meter(shard) as meter:

        async def producer() -> None:
            for start, count in chunks:
                began = time.perf_counter()
                results = await client.enqueue_many(prepared[start : start + count])
                meter.record(began, count)
                refused.extend(r for r in results if not isinstance(r, Enqueued) or r.duplicate)

        await run_workers(concurrency, producer)
    if refused:
        raise RuntimeError(f"{len(refused)} enqueues not acknowledged, e.g. {refused[0]!r}")
    return meter.phase("ratequeue enqueue, WAIT 1", messages), prepare_us


async def dequeue_and_ack(
    client: AsyncRatequeueClient,
    shard: ShardNodes,
    messages: int,
    batch: int,
    concurrency: int,
    name: str,
) -> Phase:
    """Lease exactly `messages` messages, at most `batch` per dequeue call, and ack each batch;
    the latency recorded is that of one dequeue + ack pair."""
    reserved = 0
    delivered = 0
    empty_polls = 0
    with Meter(shard) as meter:

        async def consumer() -> None:
            nonlocal reserved, delivered, empty_polls
            while reserved < messages:
                want = min(batch, messages - reserved)
                reserved += want
                began = time.perf_counter()
                leased = await client.dequeue(want, LEASE_SECONDS)
                reserved -= want - len(leased)
                if not leased:
                    empty_polls += 1
                    if empty_polls > 1000:
                        raise RuntimeError(f"queue ran dry after {delivered} of {messages}")
                    await asyncio.sleep(0.001)
                    continue
                acked = await client.ack([m.receipt for m in leased])
                if acked != len(leased):
                    raise RuntimeError(f"acked {acked} of {len(leased)} leases")
                delivered += len(leased)
                meter.record(began, len(leased))

        await run_workers(concurrency, consumer)
    return meter.phase(name, delivered)


async def bounded(concurrency: int, calls: list[Callable[[], Awaitable[object]]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Options:
    messages: int
    numbers: int
    big_numbers: int
    measure: int
    batch: int
    concurrency: int
    load_batch: int


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)

    def add(self, key: str, phase: Phase) -> Phase:
        self.phases[key] = phase
        return phase


async def run(cluster: LocalCluster, options: Options) -> Results:
    shard = cluster.shards[0]
    no_automatic_rewrites(shard)
    out = Results()
    f = out.figures

    console.log(f"(a) raw LPUSH + RPOP of {options.messages:,} messages, sync and asyncio")
    push, pop = raw_sync(shard, options.messages, options.batch)
    sync_pass = combined("raw LPUSH + RPOP, sync", push, pop)
    out.add("raw_sync_lpush", push)
    out.add("raw_sync_rpop", pop)
    out.add("raw_sync", sync_pass)
    push, pop = await raw_async(shard, options.messages, options.batch, options.concurrency)
    async_pass = combined("raw LPUSH + RPOP, asyncio", push, pop)
    out.add("raw_async_lpush", push)
    out.add("raw_async_rpop", pop)
    out.add("raw_async", async_pass)
    ceiling = max(sync_pass, async_pass, key=lambda p: p.per_second)
    f["a_ceiling"] = {"phase": ceiling.name, "messages_per_second": ceiling.per_second}

    console.log(f"(b) ratequeue: enqueue (WAIT 1), dequeue + ack of {options.messages:,} "
                f"messages on {options.numbers:,} short codes")  # fmt: skip
    reset_shard(shard)
    async with AsyncRatequeueClient(cluster.control.url, client_settings()) as client:
        numbers = short_codes(options.numbers)
        await bounded(
            options.concurrency * 4,
            [lambda n=n: client.set_rate(n, UNLIMITED) for n in numbers],  # type: ignore[misc]
        )
        settle(shard, rewrite=True)
        before = used_memory(shard.primary)
        enqueue, prepare_us = await enqueue_all(
            client, shard, numbers, options.messages, options.batch, options.concurrency
        )
        settle(shard, rewrite=True)
        queued = used_memory(shard.primary)
        drain = await dequeue_and_ack(
            client, shard, options.messages, options.batch, options.concurrency,
            "ratequeue dequeue + ack",
        )  # fmt: skip
        settle(shard, rewrite=True)
        after = used_memory(shard.primary)
    out.add("rq_enqueue", enqueue)
    out.add("rq_dequeue_ack", drain)
    rq_pass = out.add("rq", combined("ratequeue enqueue + dequeue + ack", enqueue, drain))
    f["b_client_prepare_us_per_message"] = prepare_us
    f["b_ratio"] = {
        "one_pass": rq_pass.per_second / ceiling.per_second,
        "one_pass_vs_asyncio_raw": rq_pass.per_second / async_pass.per_second,
        "target": TARGET_RATIO,
    }
    f["d_memory_via_client"] = {
        "messages": options.messages,
        "numbers": options.numbers,
        "bytes_per_queued_message": (queued - before) / options.messages,
        "bytes_per_message_left_after_ack": (after - before) / options.messages,
    }

    for label, count in (("small", options.numbers), ("big", options.big_numbers)):
        numbers = long_codes(count)
        sequence = load_sequence(numbers, options.measure)
        console.log(f"(c) {count:,} numbers, {len(sequence):,} messages: loading")
        reset_shard(shard)
        settle(shard, rewrite=True)
        before = used_memory(shard.primary)
        loaded, load_seconds = bulk_load(shard.primary, sequence, load_batch=options.load_batch)
        del sequence
        console.log(f"    loaded in {load_seconds:.1f} s; settling")
        began = time.perf_counter()
        settle(shard, rewrite=True)
        settle_seconds = time.perf_counter() - began
        loaded_memory = used_memory(shard.primary)
        console.log(f"    dequeue + ack of {options.measure:,} messages")
        async with AsyncRatequeueClient(cluster.control.url, client_settings()) as client:
            phase = await dequeue_and_ack(
                client, shard, options.measure, options.batch, options.concurrency,
                f"dequeue + ack, {count:,} numbers",
            )  # fmt: skip
        out.add(f"c_{label}", phase)
        with shard.primary.client() as conn:
            non_empty = int(conn.zcard(READY_KEY))
        if non_empty != count:
            console.log(f"[red]    {count - non_empty:,} numbers emptied: paths differ[/]")
        f[f"c_{label}"] = {
            "numbers": count,
            "loaded_messages": loaded,
            "load_seconds": load_seconds,
            "load_messages_per_second": loaded / load_seconds,
            "settle_seconds": settle_seconds,
            "non_empty_numbers_after": non_empty,
            "used_memory_delta": loaded_memory - before,
            "bytes_per_queued_message": (loaded_memory - before) / loaded,
        }
    small, big = out.phases["c_small"], out.phases["c_big"]
    f["c_slowdown"] = {
        "ratio": small.per_second / big.per_second,
        "median_window_ratio": small.median_window_rate / big.median_window_rate,
        # less sensitive to other load on the machine than wall time
        "primary_cpu_ratio": big.server_cpu_seconds
        / big.messages
        / (small.server_cpu_seconds / small.messages),
        "target": TARGET_SLOWDOWN,
    }
    # (d) the cost of a non-empty number beyond its messages, from the big state, taking a
    # message to cost what it costs in the small state (where numbers are few)
    per_message = f["c_small"]["bytes_per_queued_message"]
    big_state = f["c_big"]
    f["d_bytes_per_non_empty_number"] = (
        big_state["used_memory_delta"] - per_message * big_state["loaded_messages"]
    ) / big_state["numbers"]
    return out


# -- machine and report ------------------------------------------------------------------------
def machine(primary: RedisProcess) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = int(first.split()[1]) / 1024**2
    with primary.client() as conn:
        server = conn.info("server")
        memory = conn.info("memory")
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "redis_server": f"{server['redis_version']} ({memory.get('mem_allocator', '?')})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_py": redis.__version__,
    }


def render(out: Results, options: Options) -> Table:
    f, p = out.figures, out.phases
    table = Table(title="ratequeue on one shard (primary + 1 replica, AOF everysec)")
    table.add_column("figure")
    table.add_column("msg/s", justify="right")
    table.add_column("median of 10", justify="right")
    table.add_column("call ms p50/p99", justify="right")
    table.add_column("CPU µs/msg pri/rep/cli", justify="right")
    table.add_column("note")

    def row(phase: Phase, note: str = "") -> None:
        s = phase.summary()
        latency = (
            f"{s['call_latency_ms_p50']:.1f} / {s['call_latency_ms_p99']:.1f}"
            if phase.call_latencies_ms
            else ""
        )
        cpu = (f"{s['primary_cpu_us_per_message']:.1f} / {s['replica_cpu_us_per_message']:.1f}"
               f" / {s['client_cpu_us_per_message']:.1f}")  # fmt: skip
        median = f"{phase.median_window_rate:,.0f}" if phase.windows else ""
        table.add_row(phase.name, f"{phase.per_second:,.0f}", median, latency, cpu, note)

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]missed[/]"

    row(p["raw_sync_lpush"], f"(a) {options.batch}/pipeline, 1 connection")
    row(p["raw_sync_rpop"], "(a)")
    row(p["raw_sync"], "(a) one pass")
    row(p["raw_async_lpush"], f"(a) {options.batch}/pipeline, {options.concurrency} in flight")
    row(p["raw_async_rpop"], "(a)")
    row(p["raw_async"], "(a) one pass")
    row(p["rq_enqueue"], f"(b) {options.batch}/batch, {options.concurrency} in flight")
    row(p["rq_dequeue_ack"], f"(b) max {options.batch}/dequeue")
    row(p["rq"], "(b) one pass")
    ratio = f["b_ratio"]
    table.add_row(
        "(b)/(a) one pass", f"{ratio['one_pass']:.1%}", "", "", "",
        f"target >= {TARGET_RATIO:.0%}: {verdict(ratio['one_pass'] >= TARGET_RATIO)} "
        f"(vs asyncio raw: {ratio['one_pass_vs_asyncio_raw']:.1%})",
    )  # fmt: skip
    small, big = f["c_small"], f["c_big"]
    row(p["c_small"], f"(c) {small['loaded_messages']:,} messages loaded")
    loading = f"loaded in {big['load_seconds']:.0f} s + {big['settle_seconds']:.0f} s settle"
    row(p["c_big"], f"(c) {big['loaded_messages']:,} messages {loading}")
    slowdown = f["c_slowdown"]["ratio"]
    table.add_row(
        f"(c) slowdown {small['numbers']:,} → {big['numbers']:,}", f"{slowdown:.2f}x",
        f"{f['c_slowdown']['median_window_ratio']:.2f}x", "", "",
        f"target <= {TARGET_SLOWDOWN}x: {verdict(slowdown <= TARGET_SLOWDOWN)} "
        f"(primary CPU/msg: {f['c_slowdown']['primary_cpu_ratio']:.2f}x)",
    )  # fmt: skip
    d = f["d_memory_via_client"]
    table.add_row("(d) bytes/queued message", f"{d['bytes_per_queued_message']:,.0f}", "", "", "",
                  f"{d['numbers']:,} numbers, enqueued by the client")  # fmt: skip
    table.add_row("(d) bytes/queued message", f"{small['bytes_per_queued_message']:,.0f}",
                  "", "", "", f"{small['numbers']:,} numbers, bulk-loaded")  # fmt: skip
    table.add_row("(d) bytes/non-empty number", f"{f['d_bytes_per_non_empty_number']:,.0f}",
                  "", "", "", f"beyond its messages ({big['numbers']:,}-number state)")  # fmt: skip
    table.add_row("(d) bytes/message after ack", f"{d['bytes_per_message_left_after_ack']:,.0f}",
                  "", "", "", "ids kept in the dedup set (up to 2 windows)")  # fmt: skip
    return table


def render_profile(out: Results) -> Table:
    """Where the primary's time goes per message, by command (scripts' inner calls included)."""
    keys = ["rq_enqueue", "rq_dequeue_ack", "c_small", "c_big"]
    phases = [out.phases[k] for k in keys]
    table = Table(title="primary: calls / µs per message, by command (INFO commandstats)")
    table.add_column("command")
    for phase in phases:
        table.add_column(phase.name, justify="right")
    rows = [phase.commands_per_message() for phase in phases]
    names = sorted({n for row in rows for n in row}, key=lambda n: -max(
        row.get(n, {"us": 0})["us"] for row in rows))  # fmt: skip
    for name in names:
        cells = []
        for row in rows:
            cell = row.get(name)
            cells.append(f"{cell['calls']:.2f} / {cell['us']:.2f}" if cell else "")
        table.add_row(name, *cells)
    return table


QUICK = Options(
    messages=20_000, numbers=1_000, big_numbers=50_000, measure=20_000, batch=500,
    concurrency=4, load_batch=5_000,
)  # fmt: skip

app = typer.Typer(add_completion=False)


@app.command(
    help="Queue throughput and memory on one shard, next to raw LPUSH/RPOP on the same primary: "
    "(a) ceiling, (b) ratequeue and its ratio, (c) 1,000 vs 1,000,000 numbers, (d) bytes per "
    "message. See docs/benchmarks.md."
)
def main(
    messages: int = typer.Option(200_000, min=1_000, help="messages for (a), (b) and (d)"),
    numbers: int = typer.Option(1_000, min=1, help="numbers in (b) and the small state of (c)"),
    big_numbers: int = typer.Option(1_000_000, min=1, help="numbers in the big state of (c)"),
    measure: int = typer.Option(200_000, min=1_000, help="messages dequeued per state in (c)"),
    batch: int = typer.Option(500, min=1, max=10_000, help="messages per batch / dequeue call"),
    concurrency: int = typer.Option(4, min=1, max=64, help="batches or pipelines in flight"),
    load_batch: int = typer.Option(5_000, min=100, help="messages per EVALSHA when loading"),
    quick: bool = typer.Option(False, "--quick", help="smoke run (~20 s): small fixed counts"),
    output: Path = typer.Option(RESULTS_DIR, help="directory for the JSON result"),
    profile: bool = typer.Option(False, "--profile", help="also print the per-command table"),
    busy: bool = typer.Option(
        False, "--busy", help="keep every core busy with a CPU hog (normal priority) throughout"
    ),
) -> None:
    options = (
        QUICK
        if quick
        else Options(messages, numbers, big_numbers, measure, batch, concurrency, load_batch)
    )
    if options.measure > options.big_numbers:
        raise typer.BadParameter("--measure may be at most --big-numbers")
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="rq-bench-") as tmp:
        cluster = LocalCluster.start(Path(tmp), shards=1, replicas=1)
        try:
            host = machine(cluster.shards[0].primary)
            host["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
            console.print(
                f"machine: {host['cpu_model']}, {host['cpu_cores']} cores, "
                f"{host['memory_gib']} GiB, {host['kernel']}; redis-server "
                f"{host['redis_server']}; {host['python']}, redis-py {host['redis_py']}"
            )
            with cpu_hogs(every_core() if busy else 0):
                out = asyncio.run(run(cluster, options))
        finally:
            cluster.stop()
    host["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    console.print(render(out, options))
    if profile:
        console.print(render_profile(out))
    console.print(f"load average (1/5/15 min) at start {host['load_average_at_start']}, "
                  f"at end {host['load_average_at_end']}")  # fmt: skip
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host,
        "options": asdict(options),
        "quick": quick,
        "busy": busy,
        "figures": out.figures,
        "phases": {
            key: phase.summary() | {"name": phase.name} for key, phase in out.phases.items()
        },
    }
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=2))
    console.print(f"written {path}")


if __name__ == "__main__":
    app()
