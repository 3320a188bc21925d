"""The local fault backend: faults on processes of this machine, by signal and by iptables.

Actions (`LocalFaultBackend.inject(action, target, **params)`):

- `kill`: SIGKILL the node's pid. No undo.
- `pause`: SIGSTOP; undo SIGCONT. `resume`: SIGCONT, no undo.
- `stop`: SIGTERM (repeated: Redis ignores it while writing its first AOF), SIGKILL after
  `grace` seconds (default 5). The undo restarts the node only if told how: `restart` (a
  callable) or `command` (an argv list, started detached); otherwise there is no undo and
  `details["undo"]` says so.
- `start`: run `restart` or `command`, then wait up to `wait_seconds` (default 10; 0: don't)
  until the node's client address accepts TCP connections. No undo.
- `blackhole`: DROP every TCP packet to and from the node's peer address (`peer_host`, default
  `target.peer_host` or 127.0.0.2, and `ports`, default `[target.port]`), both directions,
  established connections too; the client address (127.0.0.1:port) keeps working. Undo deletes
  exactly those rules. With `from_target` (a NodeTarget with a pid, checked like any target;
  `from_expect` overrides the program) only that process's path to the node is cut: it is
  moved into a cgroup v2 group of its own (`<chain>-<fault id>`), new connections are matched
  with `-m cgroup --path`, the connections it already holds by their local ports; undo also
  moves it back and removes the group.
- `latency`: start `python -m chaos.faults.latency_proxy` in front of the node's client address
  with `latency_ms` added per chunk (`direction`: egress (default), ingress or both), and a
  `nat` OUTPUT DNAT rule that sends new connections to peer_host:port through it. Connections
  already open when the fault starts keep their direct path. Undo removes the rule, then
  stops the proxy.

Every signal goes through a pidfd opened before the program check, so a pid recycled between
the check and the signal is never hit: the check reads /proc/PID/cmdline and comm and expects
the program (argv[0]'s basename, or the script or `-m` package of a Python interpreter; never a
word among the arguments) to be `redis-server` with `:PORT` in its command line for Redis
roles, one of its role's programs (`common.nodes.PROGRAMS_OF_ROLE`) for the others, or the
`expect` param (a program name, not a piece of the command line); anything else is
refused with FaultError. `seconds` (any action with an undo)
rolls the fault back by itself after that long.

iptables rules live in one dedicated chain per table (default `RQCHAOS`, jumped to from
filter INPUT and OUTPUT and from nat OUTPUT), each tagged `-m comment --comment
rqchaos:<fault id>`. Chain creation is idempotent; `cleanup_all()` removes the chains, their
jumps and so every rule they hold (after a crashed run). The chains themselves stay while
faults come and go, so concurrent faults never race on them.

Not for: remote machines or containers (see the docker and gremlin backends), choosing
targets, or judging what a fault did.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chaos.faults.base import FAULT_ACTIONS, FaultError, InjectedFault, NodeTarget
from chaos.processes import (
    process_state,
    read_cmdline,
    read_comm,
    running,
    runs_program,
)
from common.nodes import PEER_HOST, PROGRAMS_OF_ROLE, REDIS_ROLES

DEFAULT_CHAIN = "RQCHAOS"
COMMENT_PREFIX = "rqchaos:"
NETWORK_ACTIONS = frozenset({"blackhole", "latency"})
_JUMPS = {"filter": ("INPUT", "OUTPUT"), "nat": ("OUTPUT",)}


# ----------------------------------------------------------------------------- processes


def expected_programs(target: NodeTarget, expect: str | None = None) -> tuple[str, ...]:
    """The programs the target's pid may run (any one of them)."""
    if expect:
        return (expect,)
    if target.role in PROGRAMS_OF_ROLE:
        return PROGRAMS_OF_ROLE[target.role]
    raise FaultError(
        f"{target.name}: no known program for role {target.role!r}; pass expect=<program> "
        "so the pid can be checked before it is signalled"
    )


def _holds_port(line: str, port: int) -> bool:
    """`:PORT` occurs in `line` as a whole port number."""
    return re.search(rf":{port}(?!\d)", line) is not None


class _Process:
    """A checked handle on a target's process: a pidfd (where the kernel has them) opened
    before the program check, so later signals reach that process or none."""

    def __init__(self, target: NodeTarget, expect: str | None) -> None:
        if not target.pid:
            raise FaultError(f"{target.name}: no pid to signal")
        self.pid = target.pid
        self.name = target.name
        self.fd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.fd = os.pidfd_open(self.pid)  # type: ignore[attr-defined]
        programs = expected_programs(target, expect)
        argv = read_cmdline(self.pid)
        if argv is None:
            self.close()
            raise FaultError(f"{target.name}: pid {self.pid} is not running")
        line = " ".join(argv)
        # The program itself, never a word among its arguments: `sleep 100 redis-server` is
        # not a Redis node. A node's own port tells it from another Redis on this machine.
        runs = runs_program(argv, read_comm(self.pid), programs)
        if runs and not expect and target.role in REDIS_ROLES:
            runs = _holds_port(line, target.port)
        if not runs:
            self.close()
            port = f" :{target.port}" if not expect and target.role in REDIS_ROLES else ""
            wanted = " or ".join(repr(program + port) for program in programs)
            raise FaultError(
                f"{target.name}: pid {self.pid} runs {line[:120]!r}, not {wanted}; "
                "refusing to signal it"
            )

    def signal(self, signum: int) -> bool:
        """Send `signum`; False if the process is already gone."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)  # type: ignore[attr-defined]
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def alive(self) -> bool:
        return running(self.pid)

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _wait_state(pid: int, wanted: set[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) in wanted:
            return True
        time.sleep(0.005)
    return False


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------- iptables


def iptables_unavailable_reason() -> str | None:
    """Why iptables faults cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "iptables faults need root"
    if shutil.which("iptables") is None:
        return "the iptables command is not installed"
    try:
        result = subprocess.run(["iptables", "-w", "5", "-S", "OUTPUT"], capture_output=True,
                                text=True, timeout=15)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"iptables does not run: {error}"
    if result.returncode != 0:
        return f"iptables does not work here: {result.stderr.strip()[:200]}"
    return None


class Iptables:
    """The few iptables operations the faults need, on one chain name per table."""

    def __init__(self, chain: str = DEFAULT_CHAIN, binary: str = "iptables") -> None:
        if not chain or len(chain) > 28 or not chain.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"bad chain name {chain!r}")
        self.chain = chain
        self.binary = binary
        self._lock = threading.Lock()

    def run(self, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [self.binary, "-w", "10", "-t", table, *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise FaultError(f"{' '.join(argv)}: {error}") from error
        if check and result.returncode != 0:
            raise FaultError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
        return result

    def ensure_chain(self, table: str) -> None:
        """Create the chain and its jumps unless they exist (safe to call any number of times,
        also from other processes)."""
        with self._lock:
            if self.run(table, "-nL", self.chain, check=False).returncode != 0:
                created = self.run(table, "-N", self.chain, check=False)
                if created.returncode != 0 and "exists" not in created.stderr:
                    raise FaultError(f"iptables -t {table} -N {self.chain}: "
                                     f"{created.stderr.strip()}")  # fmt: skip
            for parent in _JUMPS[table]:
                if self.run(table, "-C", parent, "-j", self.chain, check=False).returncode != 0:
                    self.run(table, "-I", parent, "1", "-j", self.chain)

    def append(self, table: str, rule: Sequence[str]) -> None:
        self.ensure_chain(table)
        self.run(table, "-A", self.chain, *rule)

    def delete(self, table: str, rule: Sequence[str]) -> bool:
        """Delete one rule of the chain; False if it was not there (already deleted)."""
        while True:
            result = self.run(table, "-D", self.chain, *rule, check=False)
            if result.returncode == 0:
                # Delete duplicates too (an append retried after a timeout).
                continue
            text = result.stderr.lower()
            if any(s in text for s in ("does a matching rule exist", "no chain", "bad rule",
                                       "doesn't exist", "does not exist")):  # fmt: skip
                return True
            raise FaultError(f"iptables -t {table} -D {self.chain}: {result.stderr.strip()}")

    def rules(self, table: str) -> list[str]:
        result = self.run(table, "-S", self.chain, check=False)
        if result.returncode != 0:
            return []
        return [line for line in result.stdout.splitlines() if line.startswith("-A ")]

    def remove_chain(self, table: str) -> int:
        """Remove the chain, its jumps and its rules; returns how many rules it held."""
        with self._lock:
            count = len(self.rules(table))
            for parent in _JUMPS[table]:
                while self.run(table, "-D", parent, "-j", self.chain, check=False).returncode == 0:
                    pass
            self.run(table, "-F", self.chain, check=False)
            self.run(table, "-X", self.chain, check=False)
            return count


# ----------------------------------------------------------------------------- backend


class LocalFaultBackend:
    """Faults on local processes: signals by pid, and iptables rules on loopback."""

    name = "local"

    def __init__(
        self,
        *,
        chain: str = DEFAULT_CHAIN,
        stop_grace: float = 5.0,
        python: str = sys.executable,
        proxy_start_timeout: float = 10.0,
    ) -> None:
        self.iptables = Iptables(chain)
        self.stop_grace = stop_grace
        self.python = python
        self.proxy_start_timeout = proxy_start_timeout
        self._network_reason: str | None = None
        self._network_checked = False
        self._proxies: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- FaultBackend

    def supports(self, action: str) -> bool:
        if action not in FAULT_ACTIONS:
            return False
        if action in NETWORK_ACTIONS:
            return self.network_unavailable_reason() is None
        return True

    def network_unavailable_reason(self) -> str | None:
        if not self._network_checked:
            self._network_reason = iptables_unavailable_reason()
            self._network_checked = True
        return self._network_reason

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        handler = getattr(self, f"_{action}", None)
        if action not in FAULT_ACTIONS or handler is None:
            raise FaultError(f"local backend: unknown action {action!r}")
        seconds = params.pop("seconds", None)
        try:
            inspect.signature(handler).bind(target, **params)
        except TypeError as error:
            raise FaultError(f"local backend: {action}: {error}") from None
        fault: InjectedFault = handler(target, **params)
        if seconds is not None and fault.undo is not None:
            self._rollback_after(fault, float(seconds))
        return fault

    # -- maintenance

    def cleanup_all(self) -> int:
        """Remove every rqchaos rule (the chains and their jumps), stop the latency proxies
        this backend started, and put processes a one-node blackhole moved into a cgroup of
        this chain back into the root cgroup; returns how many rules there were."""
        with self._lock:
            proxies = list(self._proxies.values())
            self._proxies.clear()
        for proxy in proxies:
            _stop_proxy(proxy)
        if shutil.which(self.iptables.binary) is None or os.geteuid() != 0:
            return 0
        count = sum(self.iptables.remove_chain(table) for table in ("filter", "nat"))
        root = _cgroup2_mount()
        if root is not None:
            for group in root.glob(f"{self.iptables.chain.lower()}-*"):
                with contextlib.suppress(FaultError):
                    _Cgroup(root, group.name, 0, "/").restore()
        return count

    def rules(self) -> list[str]:
        """The rules currently in this backend's chains (filter, then nat)."""
        return self.iptables.rules("filter") + self.iptables.rules("nat")

    # -- actions

    def _new(self, action: str, target: NodeTarget, **details: Any) -> InjectedFault:
        return InjectedFault(action=action, target=target, backend=self.name, details=details)

    def _kill(self, target: NodeTarget, *, expect: str | None = None) -> InjectedFault:
        process = _Process(target, expect)
        try:
            process.signal(signal.SIGKILL)
            gone = process.wait_gone(5.0)
        finally:
            process.close()
        return self._new("kill", target, pid=target.pid, signal="SIGKILL", exited=gone)

    def _pause(self, target: NodeTarget, *, expect: str | None = None) -> InjectedFault:
        process = _Process(target, expect)
        try:
            process.signal(signal.SIGSTOP)
            stopped = _wait_state(process.pid, {"T", "t"}, 2.0)
        except BaseException:
            process.close()
            raise
        fault = self._new("pause", target, pid=target.pid, signal="SIGSTOP", stopped=stopped)

        def undo() -> None:
            try:
                process.signal(signal.SIGCONT)
            finally:
                process.close()

        fault.undo = undo
        return fault

    def _resume(self, target: NodeTarget, *, expect: str | None = None) -> InjectedFault:
        process = _Process(target, expect)
        try:
            process.signal(signal.SIGCONT)
        finally:
            process.close()
        return self._new("resume", target, pid=target.pid, signal="SIGCONT")

    def _stop(
        self,
        target: NodeTarget,
        *,
        expect: str | None = None,
        grace: float | None = None,
        restart: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        wait_seconds: float = 10.0,
    ) -> InjectedFault:
        grace = self.stop_grace if grace is None else float(grace)
        process = _Process(target, expect)
        try:
            process.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            deadline = time.monotonic() + grace
            killed = False
            while process.alive() and time.monotonic() < deadline:
                process.signal(signal.SIGTERM)
                process.wait_gone(min(0.2, max(0.0, deadline - time.monotonic())))
            if process.alive():
                process.signal(signal.SIGKILL)
                killed = True
                process.wait_gone(5.0)
        finally:
            process.close()
        fault = self._new("stop", target, pid=target.pid, grace=grace, sigkill=killed)
        starter = self._starter(target, restart, command)
        if starter is None:
            fault.details["undo"] = (
                "none: no restart callable or command given, the node stays stopped"
            )
        else:
            fault.details["undo"] = "restart"

            def undo() -> None:
                fault.details["restarted"] = starter(wait_seconds)

            fault.undo = undo
        return fault

    def _start(
        self,
        target: NodeTarget,
        *,
        restart: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        wait_seconds: float = 10.0,
    ) -> InjectedFault:
        starter = self._starter(target, restart, command)
        if starter is None:
            raise FaultError(f"{target.name}: start needs a restart callable or a command")
        return self._new("start", target, **starter(wait_seconds))

    def _starter(
        self,
        target: NodeTarget,
        restart: Callable[[], None] | None,
        command: Sequence[str] | str | None,
    ) -> Callable[[float], dict[str, Any]] | None:
        if restart is None and not command:
            return None
        if isinstance(command, str):
            raise FaultError(f"{target.name}: command must be an argv list, not a string")

        def start(wait_seconds: float) -> dict[str, Any]:
            info: dict[str, Any] = {}
            if restart is not None:
                restart()
                info["via"] = "restart callable"
            else:
                try:
                    child = subprocess.Popen(
                        list(command or ()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True,
                    )  # fmt: skip
                except OSError as error:
                    raise FaultError(f"{target.name}: cannot start {command!r}: {error}") from None
                info.update(via="command", command=list(command or ()), pid=child.pid)
            if wait_seconds and not _wait_port(target.host, target.port, float(wait_seconds)):
                raise FaultError(
                    f"{target.name}: started, but {target.host}:{target.port} does not accept "
                    f"connections within {wait_seconds} s"
                )
            return info

        return start

    def _peer(self, target: NodeTarget, peer_host: str | None) -> str:
        return peer_host or target.peer_host or PEER_HOST

    def _require_network(self) -> None:
        reason = self.network_unavailable_reason()
        if reason is not None:
            raise FaultError(reason)

    def _blackhole(
        self,
        target: NodeTarget,
        *,
        peer_host: str | None = None,
        ports: Sequence[int] | None = None,
        from_target: NodeTarget | None = None,
        from_expect: str | None = None,
    ) -> InjectedFault:
        self._require_network()
        host = self._peer(target, peer_host)
        port_list = sorted({int(p) for p in (ports or [target.port])})
        fault_id = uuid.uuid4().hex[:12]
        comment = ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{fault_id}"]
        details: dict[str, Any] = {}
        rules: list[list[str]] = []
        group: _Cgroup | None = None
        if from_target is None:
            for port in port_list:
                # Toward the node (matches in OUTPUT and INPUT on lo) and back from it.
                rules.append(
                    ["-p", "tcp", "-d", host, "--dport", str(port), *comment, "-j", "DROP"]
                )
                rules.append(
                    ["-p", "tcp", "-s", host, "--sport", str(port), *comment, "-j", "DROP"]
                )
        else:
            process = _Process(from_target, from_expect)
            process.close()
            group = _Cgroup.move(process.pid, f"{self.iptables.chain.lower()}-{fault_id}")
            details.update(from_node=from_target.name, from_pid=process.pid, cgroup=group.name)
            for port in port_list:
                # New connections of that process: by its cgroup (sockets made from now on).
                by_group = ["-m", "cgroup", "--path", group.name]
                rules.append(["-p", "tcp", "-d", host, "--dport", str(port), *by_group,
                              *comment, "-j", "DROP"])  # fmt: skip
                # Connections it already holds: by their local port, both directions.
                for local_port in _connected_ports(process.pid, host, port):
                    rules.append(["-p", "tcp", "-d", host, "--dport", str(port),
                                  "--sport", str(local_port), *comment, "-j", "DROP"])  # fmt: skip
                    rules.append(["-p", "tcp", "-s", host, "--sport", str(port),
                                  "--dport", str(local_port), *comment, "-j", "DROP"])  # fmt: skip
        added: list[list[str]] = []
        try:
            for rule in rules:
                self.iptables.append("filter", rule)
                added.append(rule)
        except BaseException:
            for rule in added:
                with contextlib.suppress(FaultError):
                    self.iptables.delete("filter", rule)
            if group is not None:
                group.restore()
            raise
        fault = self._new(
            "blackhole",
            target,
            id=fault_id,
            peer_host=host,
            ports=port_list,
            chain=self.iptables.chain,
            comment=f"{COMMENT_PREFIX}{fault_id}",
            **details,
        )

        def undo() -> None:
            for rule in rules:
                self.iptables.delete("filter", rule)
            if group is not None:
                group.restore()

        fault.undo = undo
        return fault

    def _latency(
        self,
        target: NodeTarget,
        *,
        latency_ms: float,
        peer_host: str | None = None,
        direction: str = "egress",
    ) -> InjectedFault:
        self._require_network()
        if direction not in ("egress", "ingress", "both"):
            raise FaultError(f"latency direction must be egress, ingress or both: {direction!r}")
        if float(latency_ms) < 0:
            raise FaultError("latency_ms must be >= 0")
        host = self._peer(target, peer_host)
        if host == target.host:
            raise FaultError(
                f"{target.name}: latency needs a peer address other than the client address "
                f"{target.host} (the proxy reaches the node there)"
            )
        fault_id = uuid.uuid4().hex[:12]
        proxy, proxy_port = self._start_proxy(target, float(latency_ms), direction)
        with self._lock:
            self._proxies[fault_id] = proxy
        rule = [
            "-p", "tcp", "-d", host, "--dport", str(target.port),
            "-m", "comment", "--comment", f"{COMMENT_PREFIX}{fault_id}",
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{proxy_port}",
        ]  # fmt: skip
        try:
            self.iptables.append("nat", rule)
        except BaseException:
            self._forget_proxy(fault_id)
            raise
        fault = self._new(
            "latency",
            target,
            id=fault_id,
            peer_host=host,
            latency_ms=latency_ms,
            direction=direction,
            proxy_pid=proxy.pid,
            proxy_port=proxy_port,
            chain=self.iptables.chain,
            comment=f"{COMMENT_PREFIX}{fault_id}",
        )

        def undo() -> None:
            self.iptables.delete("nat", rule)
            self._forget_proxy(fault_id)

        fault.undo = undo
        return fault

    def _start_proxy(
        self, target: NodeTarget, latency_ms: float, direction: str
    ) -> tuple[subprocess.Popen, int]:
        argv = [
            self.python, "-m", "chaos.faults.latency_proxy",
            "--listen-host", "127.0.0.1", "--listen-port", "0",
            "--target-host", target.host, "--target-port", str(target.port),
            "--delay-ms", str(latency_ms), "--direction", direction,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with tempfile.TemporaryFile() as errors:
            proxy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=errors, env=env, start_new_session=True)  # fmt: skip
            try:
                return proxy, self._proxy_port(target, proxy)
            except FaultError as error:
                errors.seek(0)
                detail = errors.read().decode(errors="replace").strip()[-300:]
                raise FaultError(f"{error}{': ' + detail if detail else ''}") from None

    def _proxy_port(self, target: NodeTarget, proxy: subprocess.Popen) -> int:
        assert proxy.stdout is not None
        deadline = time.monotonic() + self.proxy_start_timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([proxy.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proxy.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith("LISTENING "):
            _stop_proxy(proxy)
            raise FaultError(f"{target.name}: latency proxy did not start {text!r}")
        return int(text.split()[1])

    def _forget_proxy(self, fault_id: str) -> None:
        with self._lock:
            proxy = self._proxies.pop(fault_id, None)
        if proxy is not None:
            _stop_proxy(proxy)

    def _rollback_after(self, fault: InjectedFault, seconds: float) -> None:
        def later() -> None:
            with contextlib.suppress(FaultError):
                fault.rollback()

        timer = threading.Timer(max(0.0, seconds), later)
        timer.daemon = True
        timer.start()
        fault.details["rollback_after_seconds"] = seconds


def _cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (None if it is not)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


class _Cgroup:
    """A process moved into a cgroup v2 group of its own (so iptables can match its sockets
    with `-m cgroup --path`), and moved back by `restore()`."""

    def __init__(self, root: Path, name: str, pid: int, original: str) -> None:
        self.root, self.name, self.pid, self.original = root, name, pid, original

    @classmethod
    def move(cls, pid: int, name: str) -> _Cgroup:
        root = _cgroup2_mount()
        if root is None:
            raise FaultError("a blackhole from one node needs the cgroup v2 hierarchy mounted")
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            original = next(line[3:] for line in lines if line.startswith("0::"))
        except (OSError, StopIteration):
            raise FaultError(f"pid {pid}: no cgroup v2 membership to read") from None
        group = root / name
        try:
            group.mkdir()
            (group / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as error:
            with contextlib.suppress(OSError):
                group.rmdir()
            raise FaultError(f"cannot move pid {pid} into cgroup {group}: {error}") from None
        return cls(root, name, pid, original)

    def restore(self) -> None:
        """Move the process back where it was (if it still runs) and remove the group."""
        group = self.root / self.name
        if not group.exists():
            return
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                back = self.root / self.original.lstrip("/") / "cgroup.procs"
                with contextlib.suppress(OSError):
                    back.write_text(f"{pid}\n")
        for _ in range(50):
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        raise FaultError(f"cannot remove cgroup {group}: processes are still in it")


def _connected_ports(pid: int, host: str, port: int) -> list[int]:
    """Local ports of the TCP connections `pid` holds to host:port (IPv4)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    remote = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    found = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[2] == remote and fields[9] in inodes:
                found.append(int(fields[1].split(":")[1], 16))
    return sorted(set(found))


def _stop_proxy(proxy: subprocess.Popen) -> None:
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=3)
    for stream in (proxy.stdout, proxy.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
