"""Real `etcd` clusters on loopback, on free ports, torn down on error and at exit: start a
cluster of three members (`start_etcd_cluster`), wait until it has a leader, say which member
leads, and kill, pause, resume or restart one member with its own data directory. A member
started here dies with the Python process that started it (the kernel's parent-death signal,
and `atexit`), as `common.redis_processes` does for Redis, unless the cluster is started
detached (the testbed's members outlive the command that started them).

Each member serves clients (the v3 gRPC API and its JSON gateway) on both loopback addresses
(`CLIENT_HOST` and `PEER_HOST`, so an experiment can cut one path and keep the other) and talks
Raft to the other members on `PEER_HOST` only. The timings (`EtcdTimings`) are shorter than
etcd's defaults so that a testbed elects a new leader in well under a second; they are stated
here and configurable.

Not for: talking to the cluster (see `common.etcd_client`), what the coordination store keeps in
it, or a cluster that outlives the command that started it (the testbed's, later).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.errors import EtcdStartError
from common.nodes import CLIENT_HOST, PEER_HOST
from common.redis_processes import die_with_parent, free_port, log_tail

_live: set[EtcdMember] = set()
_live_lock = threading.Lock()


@dataclass(frozen=True)
class EtcdTimings:
    """How fast the cluster notices a dead leader. etcd's defaults (100 ms heartbeat, 1 s
    election timeout) suit machines across a network; on loopback a fifth of the election
    timeout is enough, and ten heartbeats per election timeout keep a briefly busy core from
    starting an election. Pre-vote keeps a member that was paused or cut off from deposing a
    healthy leader when it comes back."""

    heartbeat_ms: int = 50
    election_ms: int = 500
    pre_vote: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ms < 1:
            raise EtcdStartError(f"heartbeat_ms must be at least 1, not {self.heartbeat_ms}")
        if self.election_ms < 5 * self.heartbeat_ms:
            # etcd itself refuses an election timeout under five heartbeats.
            raise EtcdStartError(
                f"election_ms ({self.election_ms}) must be at least five heartbeats "
                f"(5 x heartbeat_ms = {5 * self.heartbeat_ms})"
            )


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if path is None:
        raise EtcdStartError(
            "etcd not found: install the Debian package 'etcd-server' (apt-get install etcd-server)"
        )
    return path


@dataclass(eq=False)
class EtcdMember:
    """One etcd process of a cluster this process started."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    argv: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    detached: bool = False
    """In a session of its own, outliving this Python process (the testbed's members)."""

    @property
    def client_url(self) -> str:
        return f"http://{CLIENT_HOST}:{self.client_port}"

    @property
    def peer_client_url(self) -> str:
        """The same client API on the peer address (what controllers and sensors use)."""
        return f"http://{PEER_HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{PEER_HOST}:{self.peer_port}"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the member dies without telling the others (no leadership transfer)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        with _live_lock:
            _live.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the member holds its sockets open and answers nothing."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGCONT first, in case an experiment left it paused); SIGKILL if
        it has not stopped within `timeout`."""
        if self.process is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with _live_lock:
            _live.discard(self)

    def restart(self, timeout: float = 10.0) -> None:
        """Start the member again on the same ports and data directory; it rejoins the cluster
        from what it wrote there. Returns once its client port answers."""
        self.stop()
        self._launch()
        _wait_until_serving(self, timeout)

    def status(self, timeout: float = 0.5) -> dict | None:
        """The member's own view (`/v3/maintenance/status`), or None if it does not answer in
        `timeout` (dead, paused or cut off)."""
        if not self.alive():
            return None
        try:
            answer = httpx.post(
                f"{self.client_url}/v3/maintenance/status", json={}, timeout=timeout
            )
            answer.raise_for_status()
            return answer.json()
        except (httpx.HTTPError, ValueError):
            return None

    def _launch(self) -> None:
        kwargs: dict = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
        if self.detached:
            kwargs["start_new_session"] = True
        elif threading.current_thread() is threading.main_thread():
            kwargs["preexec_fn"] = die_with_parent
        with self.log_path.open("ab") as log:
            kwargs["stderr"] = log
            self.process = subprocess.Popen(self.argv, **kwargs)
        if not self.detached:
            with _live_lock:
                _live.add(self)


@dataclass(eq=False)
class EtcdCluster:
    """The members of one cluster, started together by `start_etcd_cluster`."""

    members: list[EtcdMember]
    workdir: Path
    timings: EtcdTimings
    token: str
    _ids: dict[str, str] = field(default_factory=dict)
    """Member id (as etcd reports it, a decimal string) -> member name; learnt from status."""

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, for a client that fails over between them."""
        return [member.client_url for member in self.members]

    def member(self, name: str) -> EtcdMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"no etcd member named {name!r} (members: {self.names()})")

    def names(self) -> list[str]:
        return [member.name for member in self.members]

    def leader(self, timeout: float = 0.5) -> EtcdMember | None:
        """The member that leads now, as a member that answers says; None if none answers or
        none knows a leader (the election is under way, or quorum is lost)."""
        for member in self.members:
            status = member.status(timeout)
            if status is None:
                continue
            self._ids[str(status["header"]["member_id"])] = member.name
            leader_id = str(status.get("leader", "0"))
            if leader_id == "0":
                continue
            if leader_id in self._ids:
                return self.member(self._ids[leader_id])
            self._learn_ids(timeout)
            if leader_id in self._ids:
                return self.member(self._ids[leader_id])
        return None

    def wait_for_leader(
        self, timeout: float = 10.0, *, other_than: EtcdMember | None = None
    ) -> EtcdMember:
        """Block until a member leads (one that is not `other_than`, when given) and a
        majority agrees on it; raise EtcdStartError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not other_than and self._majority_agrees(leader):
                return leader
            time.sleep(0.05)
        raise EtcdStartError(
            f"etcd cluster {self.token} has no leader after {timeout:.1f}s; "
            + "; ".join(f"{m.name}: {log_tail(m.log_path, 3)}" for m in self.members)
        )

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def _learn_ids(self, timeout: float) -> None:
        for member in self.members:
            status = member.status(timeout)
            if status is not None:
                self._ids[str(status["header"]["member_id"])] = member.name

    def _majority_agrees(self, leader: EtcdMember) -> bool:
        leader_ids = [name for name, n in self._ids.items() if n == leader.name]
        agreeing = 0
        for member in self.members:
            status = member.status()
            if status is not None and str(status.get("leader")) in leader_ids:
                agreeing += 1
        return agreeing > len(self.members) // 2


def start_etcd_cluster(
    workdir: Path,
    *,
    size: int = 3,
    timings: EtcdTimings | None = None,
    name_prefix: str = "etcd",
    timeout: float = 15.0,
    detached: bool = False,
) -> EtcdCluster:
    """Start `size` members under `workdir` (one data directory and log each) and return once
    the cluster has a leader. On failure every member started is stopped and EtcdStartError
    says why, with the members' logs. `detached` members outlive this Python process."""
    if size < 1:
        raise EtcdStartError(f"size must be at least 1, not {size}")
    timings = timings or EtcdTimings()
    binary = etcd_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        token = f"{name_prefix}-{os.getpid()}-{time.monotonic_ns()}"
        members = _plan_members(workdir, size, name_prefix)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for member in members:
            member.argv = _member_argv(binary, member, initial, token, timings)
            member.detached = detached
            member.log_path.unlink(missing_ok=True)
        cluster = EtcdCluster(members=members, workdir=workdir, timings=timings, token=token)
        try:
            for member in members:
                member._launch()
            for member in members:
                _wait_until_serving(member, timeout)
            cluster.wait_for_leader(timeout)
            return cluster
        except EtcdStartError:
            logs = " ".join(log_tail(m.log_path, 5) for m in members)
            cluster.stop()
            if "address already in use" in logs and attempt < 2:
                continue  # another process took a port between choosing and binding it
            raise
    raise EtcdStartError("etcd cluster: no ports could be bound")


def _plan_members(workdir: Path, size: int, name_prefix: str) -> list[EtcdMember]:
    taken: set[int] = set()
    members = []
    for index in range(1, size + 1):
        ports = []
        while len(ports) < 2:
            port = free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        name = f"{name_prefix}{index}"
        data_dir = workdir / f"{name}.data"
        shutil.rmtree(data_dir, ignore_errors=True)
        members.append(
            EtcdMember(name=name, client_port=ports[0], peer_port=ports[1], data_dir=data_dir)
        )
    return members


def _member_argv(
    binary: str, member: EtcdMember, initial: str, token: str, timings: EtcdTimings
) -> tuple[str, ...]:
    # `--initial-cluster-state new` is also right for a restart: etcd ignores the initial-*
    # flags once its data directory holds a member.
    return (
        binary,
        "--name", member.name,
        "--data-dir", str(member.data_dir),
        "--listen-client-urls", f"{member.client_url},{member.peer_client_url}",
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial,
        "--initial-cluster-token", token,
        "--initial-cluster-state", "new",
        "--heartbeat-interval", str(timings.heartbeat_ms),
        "--election-timeout", str(timings.election_ms),
        "--pre-vote=" + ("true" if timings.pre_vote else "false"),
        # A small testbed store: no multi-gigabyte quota, snapshots often enough that a
        # restarted member catches up from a snapshot rather than a long log.
        "--quota-backend-bytes", str(256 * 1024 * 1024),
        "--snapshot-count", "10000",
        # Every write keeps an old revision until compacted, and nothing else compacts here
        # (Kubernetes' API server does it for its etcd): without this a store under steady
        # heartbeats and workflow saves grows to its quota and then refuses writes.
        "--auto-compaction-mode", "periodic",
        "--auto-compaction-retention", "5m",
        "--logger", "zap",
        "--log-outputs", "stderr",
        # Watchers learn about progress every few seconds, so a watch on a quiet key can tell
        # a silent member from a quiet one (see common.etcd_client).
        "--experimental-watch-progress-notify-interval", "2s",
    )  # fmt: skip


def _wait_until_serving(member: EtcdMember, timeout: float) -> None:
    """Until the member answers on its client port (it may not have a leader yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not member.alive():
            raise EtcdStartError(f"etcd member {member.name} exited:\n{log_tail(member.log_path)}")
        if member.status(timeout=0.3) is not None:
            return
        time.sleep(0.05)
    raise EtcdStartError(
        f"etcd member {member.name} did not answer on {member.client_url} within "
        f"{timeout:.1f}s:\n{log_tail(member.log_path)}"
    )


@atexit.register
def _stop_everything_left() -> None:
    with _live_lock:
        left = list(_live)
    for member in left:
        member.stop(timeout=2.0)
