"""Does Sentinel fail a shard over again right after a failover, at a given down-after? (issue
15; docs/benchmarks.md, "Sentinel's second failover, explained"). By hand, not in CI: a run
starts a Sentinel testbed (`chaos.testbed`, three sentinels at `loglevel verbose`), SIGKILLs the
primary of each shard `--gap` seconds after the previous one, samples every live node's `ROLE`
every 100 ms, then reads the sentinels' logs and prints, per run:

- `+switch-master` lines (one per sentinel and failover),
- how many were followed within 3 s, in the same sentinel's log, by `+sdown` of the replica it
  had just switched to (the suspicion a reset brings when down-after is below Sentinel's 1 s
  reconnection period),
- the failovers Sentinel tried against a replica it had promoted (`+try-failover` on it),
- the 100 ms samples in which a shard had two masters.

    python -m benchmarks.sentinel_refailover --down-after-ms 500 --runs 2

For: showing whether a down-after is safe from that second failover on this machine. Not for:
how fast Sentinel fails over (`benchmarks/failover_recovery.py`).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chaos.testbed import TestbedNode, TestbedState, running_testbed
from common import sentinel_processes
from common.sentinel_processes import SentinelTimers, promotable_replicas

# `+switch-master s0 127.0.0.2 5000 127.0.0.2 5001`, `+sdown master s0 127.0.0.2 5001`...
EVENT = re.compile(
    r"(\d\d):(\d\d):(\d\d\.\d\d\d) # ([+-][a-z-]+) (?:(?:master|slave) )?(s\d+) \S+ (\d+)"
    r"(?: \S+ (\d+))?"
)
SUSPICION_WINDOW_MS = 3000


@dataclass
class Counts:
    switches: int = 0
    suspected: int = 0
    refailovers: int = 0


ORIGINAL_CONFIG = sentinel_processes.sentinel_config


def verbose_config(*args: object, **kwargs: object) -> str:
    """The testbed's sentinel config, logging at `verbose`."""
    return ORIGINAL_CONFIG(*args, **kwargs) + "loglevel verbose\n"  # type: ignore[arg-type]


def client(host: str, port: int) -> redis.Redis:
    # No retries: a dead node must answer "down" at once, not after redis-py's backoff.
    return redis.Redis(host, port, socket_timeout=0.5, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))  # fmt: skip


def masters(nodes: list[TestbedNode]) -> int:
    count = 0
    for node in nodes:
        try:
            with client(node.host, node.port) as conn:
                count += conn.execute_command("ROLE")[0] == b"master"
        except redis.RedisError:
            continue
    return count


def wait_until_sentinels_see_everything(state: TestbedState, shards: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views, promotable = [], []
        for address in state.sentinels:
            host, port = address.split(":")
            with client(host, int(port)) as conn:
                views += [conn.sentinel_master(shard) for shard in shards]
                promotable += [promotable_replicas(conn, shard) for shard in shards]
        # Replicas it could promote, not only knows of: else its first failover may find no
        # good replica and be retried only after twice the failover timeout.
        if all(v["num-other-sentinels"] == 2 for v in views) and min(promotable) >= 2:
            return
        time.sleep(0.2)
    raise SystemExit("the sentinels did not see every replica and each other within 60 s")


def kill_and_sample(state: TestbedState, shards: list[str], gap: float) -> dict[str, int]:
    """Kill each shard's primary in turn; the samples with two masters, per shard."""
    primaries = {n.shard: n for n in state.nodes if n.role == "primary"}
    others = {s: [n for n in state.nodes if n.shard == s and n.role == "replica"] for s in shards}
    doubled = dict.fromkeys(shards, 0)
    killed: list[str] = []
    start = time.monotonic()
    while time.monotonic() - start < gap * len(shards) + 14:
        for index, shard in enumerate(shards):
            if shard not in killed and time.monotonic() - start >= index * gap:
                os.kill(primaries[shard].pid, signal.SIGKILL)
                killed.append(shard)
        for shard in killed:
            doubled[shard] += masters(others[shard]) > 1
        time.sleep(0.1)
    return doubled


def count_events(log: Path) -> Counts:
    switches: list[tuple[float, str, str]] = []
    events: list[tuple[float, str, str, str]] = []
    for line in log.read_text().splitlines():
        found = EVENT.search(line)
        if found is None:
            continue
        hours, minutes, seconds, event, shard, port, new = found.groups()
        at = ((int(hours) * 60 + int(minutes)) * 60 + float(seconds)) * 1000
        if event == "+switch-master":
            switches.append((at, shard, new))
        else:
            events.append((at, event, shard, port))
    promoted = {(shard, port) for _, shard, port in switches}
    counts = Counts(switches=len(switches))
    for switched_at, shard, port in switches:
        counts.suspected += any(
            event == "+sdown" and (s, p) == (shard, port)
            and 0 <= at - switched_at <= SUSPICION_WINDOW_MS
            for at, event, s, p in events
        )  # fmt: skip
    counts.refailovers = sum(event == "+try-failover" and (s, p) in promoted
                             for _, event, s, p in events)  # fmt: skip
    return counts


def one_run(directory: Path, timers: SentinelTimers, shards: int, gap: float) -> str:
    ids = [f"s{i}" for i in range(shards)]
    with (
        mock.patch.object(sentinel_processes, "sentinel_config", verbose_config),
        running_testbed(
            directory, shards=shards, replicas=2, failover="sentinel", sentinel_timers=timers
        ) as state,  # fmt: skip
    ):
        wait_until_sentinels_see_everything(state, ids)
        doubled = kill_and_sample(state, ids, gap)
        total = Counts()
        for log in sorted((directory / "sentinel").glob("*/sentinel.log")):
            counts = count_events(log)
            total.switches += counts.switches
            total.suspected += counts.suspected
            total.refailovers += counts.refailovers
    return (
        f"{total.switches} +switch-master, {total.suspected} followed by +sdown of the promoted "
        f"replica within 3 s, {total.refailovers} failovers tried against a promoted replica; "
        f"100 ms samples with two masters: {doubled}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--down-after-ms", type=int, default=500)
    parser.add_argument("--failover-timeout-ms", type=int, default=5000)
    parser.add_argument("--shards", type=int, default=3, help="primaries killed per run")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between two kills")
    parser.add_argument("--runs", type=int, default=1)
    options = parser.parse_args()
    timers = SentinelTimers(down_after_ms=options.down_after_ms,
                            failover_timeout_ms=options.failover_timeout_ms)  # fmt: skip
    for run in range(options.runs):
        with tempfile.TemporaryDirectory(prefix="sentinel-refailover-") as directory:
            result = one_run(Path(directory), timers, options.shards, options.gap)
        print(f"down-after {options.down_after_ms} ms, run {run + 1}: {result}", flush=True)


if __name__ == "__main__":
    main()
