"""Acknowledged enqueues per second through the HTTP API, unbatched and batched, with 1 and with
N API worker processes, next to the client library on the same shard in the same run; run by
hand.

Starts one shard (a primary and one replica, `LocalCluster`, AOF as the testbed runs it) and,
round after round, `ratequeue serve --workers W` for each W asked (alternating, so drift on a
shared machine hits every setting alike). Each round drives the API for `--seconds` with
`--connections` keep-alive HTTP/1.1 connections, each sending one unbatched enqueue (a fresh id,
a 20-character text) after the other, over `--numbers` long codes, and counts the 201s (each
acknowledged after `WAIT` confirmed the replica) in the window after `--warmup`. With `--batch
N`, the round then sends `POST /v1/messages:batch` of N such messages on `--batch-connections`
connections, counting each result's 201, and the client library (`AsyncRatequeueClient.
enqueue_many`, N messages a call, as many calls in flight as batch connections) does the same
against the same shard: the issue's "batched HTTP against the client library" ratio. The load
generator is a few lines of asyncio streams in this process, far cheaper per request than
httpx or locust, so the figures measure the server; its CPU is reported beside the server's,
each process's CPU counted over the measured window only.

Prints a table and writes JSON to benchmarks/results/http-<timestamp>.json. Run from the
repository root: `python -m benchmarks.http_throughput [--workers 1,2] [--rounds 3] [--batch
100]`.
Not for: CI (figures depend on the machine and whatever else runs on it), the queue's own cost
(benchmarks/queue_throughput.py), or consumers (loadtest/locustfile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from benchmarks.cpu_hogs import cpu_hogs, every_core
from common.http_processes import wait_until_healthy
from common.nodes import CLIENT_HOST
from common.redis_processes import die_with_parent, free_port
from ratequeue.client import AsyncRatequeueClient, Enqueued
from ratequeue.local_cluster import LocalCluster

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEXT = "hello from the bench"  # 20 characters, as in the queue benchmark and the load test
TARGET_PER_SECOND = 3 * 1347  # issue 13: 3x the single-process locust figure of 2026-11-27
BATCHED_TARGET = 0.40  # issue 13: batched HTTP at least 40 % of the client library, same run

console = Console()


@dataclass
class Round:
    mode: str  # single (one message a request), batch (messages:batch), client (the library)
    workers: int
    acknowledged: int
    other_statuses: dict[str, int]
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float
    redis_cpu_seconds: float
    load_cpu_seconds: float


def redis_cpu_seconds(cluster: LocalCluster) -> float:
    """CPU the shard's primary and replicas have used so far (`INFO cpu`)."""
    total = 0.0
    for shard in cluster.shards:
        for node in [shard.primary, *shard.replicas]:
            with node.client() as conn:
                cpu = conn.info("cpu")
            total += cpu["used_cpu_sys"] + cpu["used_cpu_user"]
    return total


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its children still running (the API's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.contextmanager
def served_api(cluster: LocalCluster, workers: int) -> Iterator[tuple[int, int]]:
    """`ratequeue serve --workers W` on a free port: yields (pid, port); stopped on the way out."""
    port = free_port((CLIENT_HOST,))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "ratequeue", "serve", "--control", cluster.control.url,
         "--host", CLIENT_HOST, "--port", str(port), "--workers", str(workers)],
        env=env, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        outcome = wait_until_healthy(process, f"http://{CLIENT_HOST}:{port}/healthz", timeout=60)
        if outcome != "healthy":
            raise RuntimeError(f"ratequeue serve --workers {workers}: {outcome}")
        yield process.pid, port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Window:
    """What `drive` counted in its measured window, and the CPU each process spent in it."""

    completions: list[float]
    latencies: list[float]
    others: dict[str, int]
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    load_cpu: float = 0.0


def single_request(tag: str, index: int, sequence: int, numbers: int) -> bytes:
    number = 14155550000 + (index * 7919 + sequence) % numbers
    body = json.dumps({"id": f"{tag}-{index}-{sequence}", "body": {"text": TEXT}})
    return (
        f"POST /v1/numbers/+{number}/messages HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def batch_messages(tag: str, index: int, sequence: int, numbers: int, size: int) -> list[dict]:
    first = (index * 7919 + sequence * size) % numbers
    return [
        {"number": f"+{14155550000 + (first + i) % numbers}",
         "id": f"{tag}-{index}-{sequence}-{i}", "body": {"text": TEXT}}
        for i in range(size)
    ]  # fmt: skip


def batch_request(tag: str, index: int, sequence: int, numbers: int, size: int) -> bytes:
    body = json.dumps({"messages": batch_messages(tag, index, sequence, numbers, size)})
    return (
        f"POST /v1/messages:batch HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def measured(
    send_one: Callable[[int, int], Awaitable[tuple[int, dict[str, int]]]],
    *,
    connections: int,
    warmup: float,
    seconds: float,
    cpu: Callable[[], tuple[float, float]],
) -> Window:
    """Run `send_one(index, sequence)` back to back on `connections` tasks for `warmup +
    seconds`; each call answers (messages acknowledged, other statuses). Counts the
    acknowledgements completed in the window after the warmup, and the CPU spent in it (`cpu`:
    server and Redis seconds so far; this process's own from `time.process_time`)."""
    started = time.perf_counter()
    window_start, deadline = started + warmup, started + warmup + seconds
    window = Window([], [], {})

    async def sample(at: float, sign: int) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        server, redis = cpu()
        window.server_cpu += sign * server
        window.redis_cpu += sign * redis
        window.load_cpu += sign * time.process_time()

    async def connection(index: int) -> None:
        sequence = 0
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            acknowledged, others = await send_one(index, sequence)
            sequence += 1
            done = time.perf_counter()
            for status, count in others.items():
                window.others[status] = window.others.get(status, 0) + count
            if acknowledged and window_start <= done <= deadline:
                window.completions.extend([done] * acknowledged)
                window.latencies.append((done - sent) * 1000)

    await asyncio.gather(sample(window_start, -1), sample(deadline, 1),
                         *(connection(i) for i in range(connections)))  # fmt: skip
    return window


async def drive_http(port: int, *, tag: str, batch: int, numbers: int, **window: Any) -> Window:
    """Enqueue through the API: one message a request (`batch` 0) or `batch` a request."""
    streams = [await asyncio.open_connection(CLIENT_HOST, port)
               for _ in range(window["connections"])]  # fmt: skip

    async def send_one(index: int, sequence: int) -> tuple[int, dict[str, int]]:
        reader, writer = streams[index]
        writer.write(
            batch_request(tag, index, sequence, numbers, batch)
            if batch
            else single_request(tag, index, sequence, numbers)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        answer = await reader.readexactly(length)
        status = head[9:12].decode()
        if not batch:
            return (1, {}) if status == "201" else (0, {status: 1})
        if status != "200":
            return 0, {status: 1}
        others: dict[str, int] = {}
        acknowledged = 0
        for result in json.loads(answer)["results"]:
            if result["status"] == 201:
                acknowledged += 1
            else:
                others[str(result["status"])] = others.get(str(result["status"]), 0) + 1
        return acknowledged, others

    try:
        return await measured(send_one, **window)
    finally:
        for _, writer in streams:
            writer.close()


async def drive_client(control_url: str, *, tag: str, batch: int, numbers: int,
                       **window: Any) -> Window:  # fmt: skip
    """Enqueue through the client library, `batch` messages a call, in this process."""
    async with AsyncRatequeueClient(control_url) as client:

        async def send_one(index: int, sequence: int) -> tuple[int, dict[str, int]]:
            messages = [client.prepare(m["number"], m["body"], m["id"])
                        for m in batch_messages(tag, index, sequence, numbers, batch)]  # fmt: skip
            others: dict[str, int] = {}
            acknowledged = 0
            for outcome in await client.enqueue_many(messages):
                if isinstance(outcome, Enqueued):
                    acknowledged += 1
                else:
                    others[type(outcome).__name__] = others.get(type(outcome).__name__, 0) + 1
            return acknowledged, others

        return await measured(send_one, **window)


def as_round(mode: str, workers: int, window: Window, seconds: float) -> Round:
    latencies = sorted(window.latencies)
    count = len(window.completions)
    return Round(
        mode=mode,
        workers=workers,
        acknowledged=count,
        other_statuses=window.others,
        seconds=seconds,
        per_second=count / seconds,
        p50_ms=latencies[len(latencies) // 2] if latencies else 0.0,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0,
        server_cpu_seconds=window.server_cpu,
        redis_cpu_seconds=window.redis_cpu,
        load_cpu_seconds=window.load_cpu,
    )


def run_http_round(cluster: LocalCluster, workers: int, batch: int, tag: str,
                   options: dict) -> Round:  # fmt: skip
    with served_api(cluster, workers) as (pid, port):

        def cpu() -> tuple[float, float]:
            return process_tree_cpu_seconds(pid), redis_cpu_seconds(cluster)

        window = asyncio.run(drive_http(port, tag=tag, batch=batch, cpu=cpu, **options))
    return as_round("batch" if batch else "single", workers, window, options["seconds"])


def run_client_round(cluster: LocalCluster, batch: int, tag: str, options: dict) -> Round:
    def cpu() -> tuple[float, float]:
        return 0.0, redis_cpu_seconds(cluster)

    window = asyncio.run(
        drive_client(cluster.control.url, tag=tag, batch=batch, cpu=cpu, **options)
    )
    return as_round("client", 0, window, options["seconds"])


app = typer.Typer(add_completion=False)


@app.command()
def main(
    workers: str = typer.Option("1,2", help="worker counts to compare, comma-separated"),
    rounds: int = typer.Option(3, min=1, max=20, help="rounds of each worker count"),
    seconds: float = typer.Option(10.0, min=1, max=600, help="measured seconds per round"),
    warmup: float = typer.Option(2.0, min=0, max=60),
    connections: int = typer.Option(32, min=1, max=1000, help="concurrent HTTP connections"),
    numbers: int = typer.Option(1000, min=1, max=9999, help="long codes the load spreads over"),
    batch: int = typer.Option(
        0, min=0, max=2048, help="also messages:batch of this many, and the client library"
    ),
    batch_connections: int = typer.Option(
        4, min=1, max=64, help="connections (client: calls in flight) for the batched runs"
    ),
    output: Path = typer.Option(RESULTS_DIR, help="directory for the JSON result"),
    busy: bool = typer.Option(
        False, "--busy", help="keep every core busy with a CPU hog (normal priority) throughout"
    ),
) -> None:
    try:
        counts = [int(w) for w in workers.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--workers {workers!r}: expected counts like 1,2") from None
    single = {"connections": connections, "numbers": numbers, "warmup": warmup,
              "seconds": seconds}  # fmt: skip
    batched = {**single, "connections": batch_connections}
    load_before = os.getloadavg()
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as workdir:
        cluster = LocalCluster.start(Path(workdir), shards=1, replicas=1)
        try:
            with cpu_hogs(every_core() if busy else 0):
                for round_index in range(rounds):
                    runs: list[tuple[str, Callable[[], Round]]] = [
                        (f"{count} worker(s)", functools.partial(
                            run_http_round, cluster, count, 0, f"r{round_index}w{count}", single))
                        for count in counts
                    ]  # fmt: skip
                    if batch:
                        runs += [
                            (f"batches of {batch}, {count} worker(s)", functools.partial(
                                run_http_round, cluster, count, batch, f"r{round_index}b{count}",
                                batched))
                            for count in counts
                        ]  # fmt: skip
                        client = functools.partial(
                            run_client_round, cluster, batch, f"r{round_index}c", batched
                        )
                        runs.append((f"client library, batches of {batch}", client))
                    for label, run in runs:
                        result = run()
                        console.print(
                            f"round {round_index + 1}, {label}: {result.per_second:,.0f}/s "
                            f"(load average {os.getloadavg()[0]:.1f})"
                        )
                        results.append(result)
        finally:
            cluster.stop()
    table = Table(title="acknowledged enqueues (201 = WAIT-acknowledged), per message")
    for column in ["mode", "workers", "per second (median of rounds)", "rounds",
                   "p50 / p99 ms a request", "API CPU ms", "Redis CPU ms", "load CPU ms",
                   "not 201"]:  # fmt: skip
        table.add_column(column, justify="right")
    summary: dict[str, float] = {}
    for mode, count in dict.fromkeys((r.mode, r.workers) for r in results):
        mine = [r for r in results if (r.mode, r.workers) == (mode, count)]
        median = statistics.median(r.per_second for r in mine)
        acknowledged = sum(r.acknowledged for r in mine) or 1
        summary[f"{mode}:{count}"] = median
        table.add_row(
            mode, str(count) if count else "-", f"{median:,.0f}",
            ", ".join(f"{r.per_second:,.0f}" for r in mine),
            f"{statistics.median(r.p50_ms for r in mine):.1f} / "
            f"{statistics.median(r.p99_ms for r in mine):.1f}",
            f"{1000 * sum(r.server_cpu_seconds for r in mine) / acknowledged:.3f}",
            f"{1000 * sum(r.redis_cpu_seconds for r in mine) / acknowledged:.3f}",
            f"{1000 * sum(r.load_cpu_seconds for r in mine) / acknowledged:.3f}",
            str(sum(sum(r.other_statuses.values()) for r in mine)),
        )  # fmt: skip
    console.print(table)
    for count in counts:
        median = summary[f"single:{count}"]
        console.print(f"unbatched, {count} worker(s): {median / TARGET_PER_SECOND:.0%} of the "
                      f"target {TARGET_PER_SECOND:,}/s")  # fmt: skip
        if batch:
            ratio = summary[f"batch:{count}"] / (summary["client:0"] or 1)
            console.print(f"batched, {count} worker(s): {ratio:.0%} of the client library "
                          f"(target {BATCHED_TARGET:.0%})")  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output / f"http-{stamp}.json"
    path.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "busy": busy, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "options": {**single, "batch": batch, "batch_connections": batch_connections},
        "rounds": [asdict(r) for r in results],
        "median_per_second": summary,
    }, indent=2))  # fmt: skip
    console.print(f"written to {path}")


if __name__ == "__main__":
    app()
