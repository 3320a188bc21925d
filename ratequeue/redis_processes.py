"""Real `redis-server` processes on loopback: a control store, and per shard a primary with
replicas, on free ports, torn down on error and at exit.

Each node listens on two loopback addresses (`common.nodes`): `CLIENT_HOST` for clients and
`PEER_HOST` for replication, sensors and controllers, so experiments can cut one path and keep
the other.
Shard nodes boot parked (`ratequeue.membership`): however often one is restarted, it accepts no
write until the topology's initialisation or a controller appoints it. Test fixtures and the
local testbed both start nodes here. Not for: deciding topology changes.
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
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.nodes import CLIENT_HOST, PEER_HOST, SHARD_ROLES, Role
from ratequeue.membership import (
    boot_arguments,
    required_replicas,
    settled_lineage,
    write_quorum,
)
from ratequeue.topology import (
    FENCE_KEY,
    TOPOLOGY_CHANNEL,
    TOPOLOGY_KEY,
    Lineage,
    NodeRef,
    Shard,
    Topology,
    even_slot_ranges,
)

_live: set[RedisProcess] = set()
_live_lock = threading.Lock()


class RedisStartError(RuntimeError):
    pass


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


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the child if the thread that started it dies, so even
    # a SIGKILLed test run leaves no redis-server behind.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(eq=False)
class RedisProcess:
    name: str
    role: Role  # control | primary | replica
    shard: str | None
    port: int
    workdir: Path
    process: subprocess.Popen | None = None
    pid: int = 0
    host: str = CLIENT_HOST
    peer_host: str = PEER_HOST

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def peer_url(self) -> str:
        return f"redis://{self.peer_host}:{self.port}/0"

    def ref(self) -> NodeRef:
        return NodeRef(name=self.name, host=self.host, port=self.port, peer_host=self.peer_host)

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
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        # Redis ignores SIGTERM while it writes its initial AOF (right after a sync), so repeat it.
        while self.alive() and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            for _ in range(10):
                if not self.alive():
                    break
                time.sleep(0.02)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with _live_lock:
            _live.discard(self)

    def restart(self, *, replica_of: RedisProcess | None = None, timeout: float = 10.0) -> None:
        """Start the node again on the same port and data directory (a shard node boots
        parked), then, with `replica_of`, attach it to that primary."""
        self.stop()
        fresh = start_redis(
            self.name,
            self.role,
            self.shard,
            self.workdir,
            port=self.port,
            detached=self.process is None,
            timeout=timeout,
        )
        self.process, self.pid = fresh.process, fresh.pid
        if replica_of is not None:
            self.attach_to(replica_of)

    def attach_to(self, primary: RedisProcess) -> None:
        """Follow `primary` (its peer address). Only for a node listed as its replica."""
        with self.client() as conn:
            conn.execute_command("REPLICAOF", primary.peer_host, str(primary.port))

    def appoint(self, epoch: int, *, min_replicas: int) -> None:
        """Make this node the primary of a shard epoch (`ratequeue.membership.appoint_primary`,
        for synchronous set-up code)."""
        with self.client() as conn:
            if conn.info("replication").get("role") != "master":
                conn.execute_command("REPLICAOF", "NO", "ONE")
            conn.config_set("min-replicas-to-write", 0)
            conn.set(FENCE_KEY, str(epoch))
            for name, value in write_quorum(min_replicas).items():
                conn.config_set(name, value)

    def lineage(self) -> Lineage | None:
        return settled_lineage(self.replication())

    def replication(self) -> dict:
        with self.client() as conn:
            return conn.info("replication")


def start_redis(
    name: str,
    role: Role,
    shard: str | None,
    workdir: Path,
    *,
    port: int | None = None,
    detached: bool = False,
    timeout: float = 10.0,
) -> RedisProcess:
    """Start one redis-server and return when it answers PING. A shard node (role `primary` or
    `replica`) boots parked: it follows nothing and refuses writes until appointed or attached.

    `detached` nodes outlive this Python process (the testbed); others die with it."""
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
        if role in SHARD_ROLES:
            args += boot_arguments()
        kwargs: dict = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if detached:
            kwargs["start_new_session"] = True
        elif threading.current_thread() is threading.main_thread():
            kwargs["preexec_fn"] = _die_with_parent
        process = subprocess.Popen(args, **kwargs)
        node = RedisProcess(
            name=name, role=role, shard=shard, port=chosen, workdir=workdir,
            process=None if detached else process, pid=process.pid,
        )  # fmt: skip
        if not detached:
            with _live_lock:
                _live.add(node)
        if _wait_until_answers(node, process, timeout):
            return node
        log_text = _tail(nodedir / "redis.log")
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_replicas_in_sync(
    primary: RedisProcess, replicas: list[RedisProcess], timeout: float = 15.0
) -> None:
    """Return once every replica reports `master_link_status:up` and the primary counts all of
    them in `WAIT` after a write. After a diskless sync the primary streams writes to a replica
    only from its first REPLCONF ACK, up to a second later; a WAIT before that falls short."""
    deadline = time.monotonic() + timeout
    pending = list(replicas)
    while pending:
        pending = [r for r in pending if r.replication().get("master_link_status") != "up"]
        if pending:
            if time.monotonic() > deadline:
                names = ", ".join(r.name for r in pending)
                raise RedisStartError(f"replicas not in sync after {timeout:.0f} s: {names}")
            time.sleep(0.02)
    with primary.client() as conn:
        while True:
            try:
                conn.incr("rq:barrier")
                if int(conn.execute_command("WAIT", len(replicas), 100)) >= len(replicas):
                    return
            except redis.ResponseError as error:
                # An appointed primary refuses writes until its replicas acknowledge it.
                if not str(error).startswith("NOREPLICAS"):
                    raise
            if time.monotonic() > deadline:
                raise RedisStartError(f"{primary.name}: replicas never acknowledged a write")
            time.sleep(0.02)


@dataclass
class ShardNodes:
    id: str
    primary: RedisProcess
    replicas: list[RedisProcess]


@dataclass
class LocalCluster:
    """A control store and shards of real redis-server processes. Use as a context manager, or
    call `stop()`; nodes not detached are also stopped at interpreter exit."""

    workdir: Path
    control: RedisProcess
    shards: list[ShardNodes] = field(default_factory=list)
    min_replicas: int = 1
    """What clients' `WAIT` requires: an appointed primary with fewer replicas refuses writes."""

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        shards: int = 3,
        replicas: int = 2,
        min_replicas: int = 1,
        detached: bool = False,
    ) -> LocalCluster:
        workdir.mkdir(parents=True, exist_ok=True)
        control = start_redis("control", "control", None, workdir, detached=detached)
        cluster = cls(workdir=workdir, control=control, min_replicas=min_replicas)
        try:
            for index in range(shards):
                shard_id = f"s{index}"
                primary = start_redis(
                    f"{shard_id}-primary", "primary", shard_id, workdir, detached=detached
                )
                shard = ShardNodes(shard_id, primary, [])
                cluster.shards.append(shard)
                for r in range(replicas):
                    shard.replicas.append(
                        start_redis(
                            f"{shard_id}-replica{r + 1}", "replica", shard_id, workdir,
                            detached=detached,
                        )
                    )  # fmt: skip
            cluster.publish_initial_topology()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def nodes(self) -> list[RedisProcess]:
        return [self.control] + [
            node for shard in self.shards for node in [shard.primary, *shard.replicas]
        ]

    def shard(self, shard_id: str) -> ShardNodes:
        return next(s for s in self.shards if s.id == shard_id)

    def initial_topology(self, lineages: dict[str, Lineage] | None = None) -> Topology:
        ranges = even_slot_ranges(len(self.shards))
        return Topology(
            epoch=1,
            shards=[
                Shard(
                    id=shard.id,
                    slots=slots,
                    epoch=1,
                    primary=shard.primary.ref(),
                    replicas=[r.ref() for r in shard.replicas],
                    lineage=(lineages or {}).get(shard.id),
                    appointed_enqueues=0,  # appointed empty
                )
                for shard, slots in zip(self.shards, ranges, strict=True)
            ],
        )

    def publish_initial_topology(self) -> Topology:
        """Epoch 1, in the order the membership argument needs: appoint each primary (fence and
        lineage), store the map listing every replica, and only then attach the replicas."""
        for shard in self.shards:
            shard.primary.appoint(
                1, min_replicas=required_replicas(self.min_replicas, len(shard.replicas))
            )
        topology = self.initial_topology()
        with self.control.client() as conn:
            conn.set(TOPOLOGY_KEY, topology.model_dump_json())
            conn.publish(TOPOLOGY_CHANNEL, "1")
        for shard in self.shards:
            for replica in shard.replicas:
                replica.attach_to(shard.primary)
        for shard in self.shards:
            wait_for_replicas_in_sync(shard.primary, shard.replicas)
        # A new primary's replication id is final once its first replica synced: record it now
        # (a controller's shard keeper would, too).
        lineages = {shard.id: shard.primary.lineage() for shard in self.shards}
        topology = self.initial_topology({k: v for k, v in lineages.items() if v is not None})
        with self.control.client() as conn:
            conn.set(TOPOLOGY_KEY, topology.model_dump_json())
        return topology

    def stop(self) -> None:
        for node in reversed(self.nodes()):
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_everything_left() -> None:
    with _live_lock:
        left = list(_live)
    for node in left:
        node.stop(timeout=2.0)
