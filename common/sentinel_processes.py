"""Real `redis-sentinel` processes on loopback, on free ports: one Sentinel monitoring named
masters with the timers a deployment chooses (`SentinelTimers`), started from a config file of
its own (Sentinel rewrites it as it learns), detached (the testbed's outlive the command that
started them) or dying with the Python process that started them (benchmarks, tests).

Not for: following what Sentinel decides (`ratequeue.sentinel_topology`), or Redis data nodes
(`common.redis_processes`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import BaseModel, ConfigDict, Field

from common.errors import RedisStartError
from common.nodes import CLIENT_HOST
from common.redis_processes import free_port, log_tail, spawn_server

# Masters are agreed down by two of the three sentinels a deployment runs.
QUORUM = 2


class SentinelTimers(BaseModel):
    """Sentinel's per-master timers. The defaults suit a loopback testbed (a failover in about
    three seconds), not Sentinel's own (30 s down-after, 3 min failover-timeout).

    A down-after at or below Sentinel's fixed 1 s ping and reconnection period lets a sentinel
    fail a shard over again right after a failover (README, "Under Redis Sentinel"): after
    `+switch-master` it counts from its switch, reconnects to the promoted replica up to 1 s
    later, and the stale "down" answers about the dead primary make its suspicion a quorum."""

    model_config = ConfigDict(extra="forbid")

    down_after_ms: int = Field(
        2000, ge=100, le=600_000, description="no valid answer this long: subjectively down"
    )
    failover_timeout_ms: int = Field(
        10_000, ge=1000, le=3_600_000, description="how long a failover may take before retried"
    )
    parallel_syncs: int = Field(
        1, ge=1, le=16, description="replicas resynced at once with a new primary"
    )


@dataclass
class SentinelProcess:
    """A redis-sentinel this process started; `pid` for one started detached."""

    name: str
    port: int
    directory: Path
    pid: int
    argv: tuple[str, ...]
    process: subprocess.Popen | None = None
    host: str = CLIENT_HOST

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(self.host, self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout)  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return  # a detached one is stopped by pid by whoever records it (the testbed)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def sentinel_command(config: Path) -> list[str]:
    """`redis-sentinel CONFIG`: that program name (not `redis-server --sentinel`) is what the
    testbed checks a sentinel's pid against (`common.nodes.PROGRAMS_OF_ROLE`)."""
    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise RedisStartError(
            "redis-sentinel not found: install the Debian package 'redis-sentinel' "
            "(apt-get install redis-sentinel)"
        )
    return [binary, str(config)]


def sentinel_config(
    port: int, directory: Path, masters: dict[str, tuple[str, int]], timers: SentinelTimers
) -> str:
    """The config file of one sentinel monitoring `masters` (name → host, port)."""
    lines = [
        f"port {port}", f"bind {CLIENT_HOST}", "protected-mode no", "daemonize no",
        f'dir "{directory}"', f'logfile "{directory / "sentinel.log"}"',
    ]  # fmt: skip
    for name, (host, master_port) in masters.items():
        lines += [
            f"sentinel monitor {name} {host} {master_port} {QUORUM}",
            f"sentinel down-after-milliseconds {name} {timers.down_after_ms}",
            f"sentinel failover-timeout {name} {timers.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} {timers.parallel_syncs}",
        ]
    return "\n".join(lines) + "\n"


def start_sentinel(
    name: str,
    workdir: Path,
    masters: dict[str, tuple[str, int]],
    timers: SentinelTimers | None = None,
    *,
    detached: bool = False,
    timeout: float = 10.0,
) -> SentinelProcess:
    """Start one sentinel monitoring `masters` and return when it answers PING."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sentinel.conf"
    for _ in range(5):
        port = free_port((CLIENT_HOST,))
        config.write_text(sentinel_config(port, directory, masters, timers or SentinelTimers()))
        argv = sentinel_command(config)
        process = spawn_server(argv, detached=detached)
        sentinel = SentinelProcess(name, port, directory, process.pid, tuple(argv), process)
        if _answers(sentinel, process, timeout):
            if detached:
                sentinel.process = None
            return sentinel
        sentinel.stop()  # lost the port to someone else, or did not start: try another port
    raise RedisStartError(f"sentinel {name} did not start:\n{log_tail(directory / 'sentinel.log')}")


def _answers(sentinel: SentinelProcess, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(redis.RedisError, OSError), sentinel.client() as conn:
            if conn.ping():
                return True
        time.sleep(0.05)
    return False


def start_sentinels(
    workdir: Path,
    masters: dict[str, tuple[str, int]],
    timers: SentinelTimers | None = None,
    *,
    count: int = 3,
    detached: bool = False,
) -> list[SentinelProcess]:
    """`count` sentinels (`sentinel1`...) monitoring `masters`; none left running on error."""
    started: list[SentinelProcess] = []
    try:
        for index in range(count):
            started.append(
                start_sentinel(f"sentinel{index + 1}", workdir, masters, timers, detached=detached)
            )
    except BaseException:
        for sentinel in started:
            stop_pid(sentinel.pid)
        raise
    return started


# A replica `SENTINEL FAILOVER` may promote (`sentinelSelectSlave` in sentinel.c) is connected,
# not down, of non-zero priority, answered a ping within 5 s and an INFO within 30 s (5 s once
# the master is down), and its master link is not down for long. One the sentinel has only
# heard of from the master's INFO is still `disconnected`, and its master-link-status stays
# `err` until its own first INFO (info-refresh then reads 0, not "never"): NOGOODSLAVE. The
# bounds here are stricter than Sentinel's, so they still hold when the command arrives.
PING_WITHIN_MS = 2000
INFO_WITHIN_MS = 20_000


def promotable_replicas(conn: redis.Redis, master: str) -> int:
    """How many of `master`'s replicas the sentinel behind `conn` would promote now, by the
    rules above. "num-slaves" counts replicas it merely knows of."""
    return sum(
        1
        for replica in conn.sentinel_slaves(master)
        if not any(replica.get(flag) for flag in ("is_sdown", "is_odown", "is_disconnected"))
        and replica.get("master-link-status") == "ok"
        and int(replica.get("slave-priority", 0)) > 0
        and int(replica.get("last-ok-ping-reply", PING_WITHIN_MS)) < PING_WITHIN_MS
        and int(replica.get("info-refresh", INFO_WITHIN_MS)) < INFO_WITHIN_MS
    )


def stop_pid(pid: int) -> None:
    """SIGKILL a sentinel this process started (an unwinding start: its state is not kept)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
