"""The main job while experiments are not there yet: a local multi-shard testbed, traffic through
its HTTP API for a while, and a table of what happened (acknowledged, delivered, lost,
duplicated, rate conformance, latency per shard)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from chaos.ledger import Ledger
from chaos.load import LoadProfile, LoadRun, default_rates, number_pool
from chaos.testbed import running_testbed

# Deliveries observed this much earlier than the rate allows still count as on time: the
# consumer sees a lease a little after the shard granted it, and not always equally late.
RATE_JITTER_TOLERANCE = 0.25


def run_demo(
    *, shards: int, replicas: int, seconds: float, profile: LoadProfile, console: Console
) -> bool:
    with tempfile.TemporaryDirectory(prefix="ratequeue-demo-") as scratch:
        console.print(f"starting testbed: {shards} shards x (1 primary + {replicas} replicas)")
        with running_testbed(Path(scratch), shards=shards, replicas=replicas) as testbed:
            load = f"{profile.enqueue_per_second:g} msg/s over {profile.numbers} numbers"
            console.print(f"API {testbed.api}; {seconds:g} s of load, {load}")
            ledger = asyncio.run(LoadRun(testbed.api, profile, Ledger()).run(seconds))
            shard_ids = sorted({n.shard for n in testbed.nodes if n.shard})
    return print_summary(ledger, shard_ids, profile, console)


def print_summary(ledger: Ledger, shard_ids: list[str], profile: LoadProfile,
                  console: Console) -> bool:  # fmt: skip
    table = Table(title="ratequeue demo")
    for column in ("shard", "acknowledged", "delivered", "lost", "availability",
                   "enqueue p50 ms", "enqueue p99 ms"):  # fmt: skip
        table.add_column(column, justify="right")
    delivered = ledger.delivered_ids
    for shard in [*shard_ids, None]:
        acked = {i for i, (_, s, _) in ledger.acknowledged.items() if shard in (None, s)}
        latency = ledger.latency_percentiles(shard)
        availability = ledger.availability(shard)
        table.add_row(
            shard or "all",
            str(len(acked)),
            str(len(acked & delivered)),
            str(len(acked - delivered)),
            "-" if availability is None else f"{availability:.2%}",
            f"{latency.get('p50', 0) * 1000:.1f}",
            f"{latency.get('p99', 0) * 1000:.1f}",
        )
    console.print(table)
    checks = ledger.rate_checks(default_rates(number_pool(profile)))
    worst = max(checks, key=lambda c: c.max_early_seconds, default=None)
    lost = len(ledger.lost())
    console.print(f"duplicates (redeliveries): {ledger.duplicates()}")
    if worst is not None:
        console.print(f"rate limits: {len(checks)} numbers checked; worst early delivery "
                      f"{worst.max_early_seconds * 1000:.0f} ms ({worst.number})")  # fmt: skip
    ok = lost == 0 and (worst is None or worst.max_early_seconds <= RATE_JITTER_TOLERANCE)
    console.print("[bold green]OK[/]: nothing acknowledged was lost" if ok
                  else f"[bold red]FAILED[/]: {lost} acknowledged messages lost")  # fmt: skip
    return ok
