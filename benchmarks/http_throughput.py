"""Single-message enqueues per second through the HTTP API, with 1 and with N API worker
processes in the same run, run by hand.

Starts one shard (a primary and one replica, `LocalCluster`, AOF as the testbed runs it) and,
round after round, `ratequeue serve --workers W` for each W asked (alternating, so drift on a
shared machine hits every setting alike). Each round drives the API for `--seconds` with
`--connections` keep-alive HTTP/1.1 connections, each sending one unbatched enqueue (a fresh id,
a 20-character text) after the other, over `--numbers` long codes, and counts the 201s (each
acknowledged after `WAIT` confirmed the replica) in the window after `--warmup`. The load
generator is a few lines of asyncio streams in this process, far cheaper per request than
httpx or locust, so the figures measure the server; its CPU is reported beside the server's.

Prints a table and writes JSON to benchmarks/results/http-<timestamp>.json. Run from the
repository root: `python -m benchmarks.http_throughput [--workers 1,2] [--rounds 3]`.
Not for: CI (figures depend on the machine and whatever else runs on it), the queue's own cost
(benchmarks/queue_throughput.py), or consumers (loadtest/locustfile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from common.http_processes import wait_until_healthy
from common.nodes import CLIENT_HOST
from common.redis_processes import die_with_parent, free_port
from ratequeue.local_cluster import LocalCluster

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEXT = "hello from the bench"  # 20 characters, as in the queue benchmark and the load test
TARGET_PER_SECOND = 3 * 1347  # issue 13: 3x the single-process locust figure of 2026-11-27

console = Console()


@dataclass
class Round:
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


async def drive(
    port: int, *, tag: str, connections: int, numbers: int, warmup: float, seconds: float
) -> tuple[list[float], list[float], dict[str, int]]:
    """Enqueue back to back on `connections` connections for `warmup + seconds`; returns the
    completion times and latencies of the 201s in the measured window, and other statuses."""
    started = time.perf_counter()
    window_start, deadline = started + warmup, started + warmup + seconds
    completions: list[float] = []
    latencies: list[float] = []
    others: dict[str, int] = {}

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(CLIENT_HOST, port)
        sequence = 0
        try:
            while time.perf_counter() < deadline:
                number = 14155550000 + (index * 7919 + sequence) % numbers
                body = json.dumps({"id": f"{tag}-{index}-{sequence}", "body": {"text": TEXT}})
                request = (
                    f"POST /v1/numbers/+{number}/messages HTTP/1.1\r\nHost: bench\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
                ).encode()
                sequence += 1
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                done = time.perf_counter()
                status = head[9:12].decode()
                if status != "201":
                    others[status] = others.get(status, 0) + 1
                elif window_start <= done <= deadline:
                    completions.append(done)
                    latencies.append((done - sent) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    return completions, latencies, others


def run_round(cluster: LocalCluster, workers: int, tag: str, options: dict) -> Round:
    with served_api(cluster, workers) as (pid, port):
        server_before = process_tree_cpu_seconds(pid)
        redis_before = redis_cpu_seconds(cluster)
        load_before = time.process_time()
        completions, latencies, others = asyncio.run(drive(port, tag=tag, **options))
        server_cpu = process_tree_cpu_seconds(pid) - server_before
        redis_cpu = redis_cpu_seconds(cluster) - redis_before
        load_cpu = time.process_time() - load_before
    latencies.sort()
    count = len(completions)
    return Round(
        workers=workers,
        acknowledged=count,
        other_statuses=others,
        seconds=options["seconds"],
        per_second=count / options["seconds"],
        p50_ms=latencies[count // 2] if count else 0.0,
        p99_ms=latencies[min(count - 1, int(count * 0.99))] if count else 0.0,
        server_cpu_seconds=server_cpu,
        redis_cpu_seconds=redis_cpu,
        load_cpu_seconds=load_cpu,
    )


app = typer.Typer(add_completion=False)


@app.command()
def main(
    workers: str = typer.Option("1,2", help="worker counts to compare, comma-separated"),
    rounds: int = typer.Option(3, min=1, max=20, help="rounds of each worker count"),
    seconds: float = typer.Option(10.0, min=1, max=600, help="measured seconds per round"),
    warmup: float = typer.Option(2.0, min=0, max=60),
    connections: int = typer.Option(32, min=1, max=1000, help="concurrent HTTP connections"),
    numbers: int = typer.Option(1000, min=1, max=9999, help="long codes the load spreads over"),
    output: Path = typer.Option(RESULTS_DIR, help="directory for the JSON result"),
) -> None:
    try:
        counts = [int(w) for w in workers.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--workers {workers!r}: expected counts like 1,2") from None
    options = {"connections": connections, "numbers": numbers, "warmup": warmup,
               "seconds": seconds}  # fmt: skip
    load_before = os.getloadavg()
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as workdir:
        cluster = LocalCluster.start(Path(workdir), shards=1, replicas=1)
        try:
            for round_index in range(rounds):
                for count in counts:
                    result = run_round(cluster, count, f"r{round_index}w{count}", options)
                    console.print(f"round {round_index + 1}, {count} worker(s): "
                                  f"{result.per_second:,.0f}/s")  # fmt: skip
                    results.append(result)
        finally:
            cluster.stop()
    table = Table(title="unbatched enqueues through HTTP (201 = WAIT-acknowledged)")
    for column in ["workers", "per second (median of rounds)", "rounds", "p50 ms", "p99 ms",
                   "API CPU ms/req", "Redis CPU ms/req", "load CPU ms/req",
                   "not 201"]:  # fmt: skip
        table.add_column(column, justify="right")
    summary = {}
    for count in counts:
        mine = [r for r in results if r.workers == count]
        median = statistics.median(r.per_second for r in mine)
        acknowledged = sum(r.acknowledged for r in mine) or 1
        summary[count] = median
        table.add_row(
            str(count), f"{median:,.0f}", ", ".join(f"{r.per_second:,.0f}" for r in mine),
            f"{statistics.median(r.p50_ms for r in mine):.1f}",
            f"{statistics.median(r.p99_ms for r in mine):.1f}",
            f"{1000 * sum(r.server_cpu_seconds for r in mine) / acknowledged:.2f}",
            f"{1000 * sum(r.redis_cpu_seconds for r in mine) / acknowledged:.3f}",
            f"{1000 * sum(r.load_cpu_seconds for r in mine) / acknowledged:.2f}",
            str(sum(sum(r.other_statuses.values()) for r in mine)),
        )  # fmt: skip
    console.print(table)
    if 1 in summary:
        for count, median in summary.items():
            console.print(
                f"{count} worker(s) / 1 worker: {median / summary[1]:.2f}x; "
                f"target {TARGET_PER_SECOND:,}/s: {median / TARGET_PER_SECOND:.0%}"
            )
    output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output / f"http-{stamp}.json"
    path.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "options": options, "rounds": [asdict(r) for r in results],
        "median_per_second": {str(k): v for k, v in summary.items()},
    }, indent=2))  # fmt: skip
    console.print(f"written to {path}")


if __name__ == "__main__":
    app()
