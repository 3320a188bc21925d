"""Real `redis-server` processes on loopback, on free ports, torn down on error and at exit:
start one (`start_redis`), find a free port, stop, signal and restart it. A process started here
dies with the Python process that started it (the kernel's parent-death signal, and `atexit`),
unless it is started detached (the testbed's nodes outlive the command that started them).

Each node listens on two loopback addresses (`common.nodes`): `CLIENT_HOST` for clients and
`PEER_HOST` for replication, sensors and controllers, so experiments can cut one path and keep
the other. Not for: what a node does in a shard (parked boot, appointment, attach: see
`ratequeue.local_cluster`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, TypeVar

import redis

from common.errors import RedisStartError
from common.nodes import CLIENT_HOST, PEER_HOST, SHARD_ROLES, Role

_live: set[RedisProcess] = set()
_live_lock = threading.Lock()


def redis_server_binary() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        raise RedisStartError(
            "redis-server not found: install the Debian package 'redis-server' "
            "(apt-get install redis-server)"
        )
    return path


def free_port(hosts: tuple[str, ...] = (CLIENT_HOST, PEER_HOST)) -> int:
    """A port that is free on every one of `hosts` right now (the caller retries on a race)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RedisStartError("no free port found on loopback")


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the child if the thread that started it dies, so even
    # a SIGKILLed test run leaves no redis-server behind.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn_server(argv: list[str], *, detached: bool) -> subprocess.Popen:
    """Start a Redis program (its output goes to its log file): in a session of its own when
    `detached` (it outlives this process), else dying with the thread that started it."""
    kwargs: dict = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if detached:
        kwargs["start_new_session"] = True
    elif threading.current_thread() is threading.main_thread():
        kwargs["preexec_fn"] = die_with_parent
    return subprocess.Popen(argv, **kwargs)


@dataclass(eq=False)
class RedisProcess:
    """A redis-server this process started (or found by pid: a detached one)."""

    name: str
    role: Role  # a Redis role: control, primary or replica
    shard: str | None
    port: int
    workdir: Path
    process: subprocess.Popen | None = None
    pid: int = 0
    host: str = CLIENT_HOST
    peer_host: str = PEER_HOST
    boot_args: tuple[str, ...] = ()
    """Arguments it was started with beyond the common ones; a restart gives them again."""
    argv: tuple[str, ...] = ()
    """Its whole command line as started (redis-server rewrites the one /proc shows)."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def peer_url(self) -> str:
        return f"redis://{self.peer_host}:{self.port}/0"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGCONT first, in case an experiment left it paused)."""
        stop_together([self], timeout=timeout)

    def restart(self, *, timeout: float = 10.0, empty: bool = False) -> None:
        """Start the node again on the same port, data directory and boot arguments; `empty`:
        its data files deleted first, so it comes back with nothing (a store that lost its
        disk, or was rebuilt)."""
        self.stop()
        if empty:
            nodedir = self.workdir / self.name
            shutil.rmtree(nodedir / "appendonlydir", ignore_errors=True)
            (nodedir / "dump.rdb").unlink(missing_ok=True)
        fresh = start_redis(
            self.name,
            self.role,
            self.shard,
            self.workdir,
            port=self.port,
            detached=self.process is None,
            timeout=timeout,
            boot_args=self.boot_args,
        )
        self.process, self.pid, self.argv = fresh.process, fresh.pid, fresh.argv

    def replication(self) -> dict:
        with self.client() as conn:
            return conn.info("replication")


Process = TypeVar("Process", bound=RedisProcess)


class StartOptions(TypedDict, total=False):
    """The keyword options of `start_redis` that a wrapper starting its own kind of node
    passes through (`ratequeue.local_cluster.start_node`)."""

    port: int | None
    detached: bool
    timeout: float


def start_redis(
    name: str,
    role: Role,
    shard: str | None,
    workdir: Path,
    *,
    port: int | None = None,
    detached: bool = False,
    timeout: float = 10.0,
    boot_args: tuple[str, ...] = (),
    node_type: type[Process] = RedisProcess,  # type: ignore[assignment]
) -> Process:
    """Start one redis-server (with `boot_args` after the common arguments) as a `node_type`,
    and return when it answers PING.

    `detached` nodes outlive this Python process (the testbed); others die with it."""
    if role in SHARD_ROLES and not boot_args:
        # A shard node that boots writable could acknowledge writes no replica holds.
        raise RedisStartError(
            f"{name}: a shard node boots parked; start it with its boot arguments"
        )
    binary = redis_server_binary()
    nodedir = workdir / name
    nodedir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        chosen = port or free_port()
        args = [
            binary,
            "--port", str(chosen),
            "--bind", CLIENT_HOST, PEER_HOST,
            "--dir", str(nodedir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", "redis.log",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--repl-ping-replica-period", "1",
            "--repl-timeout", "5",
            # A dedup window's hash expires with every id of an hour in it: free it in the
            # background, or the primary (and its replicas) stall past the write quorum's lag.
            "--lazyfree-lazy-expire", "yes",
            "--lazyfree-lazy-user-del", "yes",
        ]  # fmt: skip
        args += boot_args
        process = spawn_server(args, detached=detached)
        node = node_type(
            name=name, role=role, shard=shard, port=chosen, workdir=workdir,
            process=None if detached else process, pid=process.pid, boot_args=boot_args,
            argv=tuple(args),
        )  # fmt: skip
        if not detached:
            with _live_lock:
                _live.add(node)
        if _wait_until_answers(node, process, timeout):
            return node
        log_text = log_tail(nodedir / "redis.log")
        node.stop()
        if "Address already in use" in log_text and port is None and attempt < 4:
            continue
        raise RedisStartError(f"redis-server {name} did not start on port {chosen}:\n{log_text}")
    raise RedisStartError(f"redis-server {name}: no port could be bound")


def _wait_until_answers(node: RedisProcess, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with node.client(timeout=0.5) as conn:
                # The process just started, not another one that already held the port.
                if conn.ping() and int(conn.info("server")["process_id"]) == process.pid:
                    return True
        except redis.RedisError:
            pass
        time.sleep(0.02)
    return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_together(nodes: Sequence[RedisProcess], timeout: float = 5.0) -> None:
    """Stop every node, all signalled at once (each shutdown fsyncs its AOF: one after the
    other, a cluster's teardown costs their sum). SIGCONT first, in case an experiment left a
    node paused; SIGKILL for whatever still runs after `timeout`."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    running = [node for node in nodes if node.alive()]
    # Redis ignores SIGTERM while it writes its initial AOF (right after a sync), so repeat it.
    while running and time.monotonic() < deadline:
        for node in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
        for _ in range(10):
            running = [node for node in running if node.alive()]
            if not running:
                break
            time.sleep(0.02)
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
    for node in nodes:
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=timeout)
        with _live_lock:
            _live.discard(node)


@atexit.register
def _stop_everything_left() -> None:
    with _live_lock:
        left = list(_live)
    stop_together(left, timeout=2.0)
