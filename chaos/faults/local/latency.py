"""The latency fault: a `chaos.faults.latency_proxy` process in front of the node's client
address, and a nat DNAT rule that sends new connections to its peer address through the proxy.
Connections already open keep their direct path. Undo removes the rule, then stops the proxy.

Not for: cutting a path off (`blackhole`), or the proxy itself (`chaos.faults.latency_proxy`).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.iptables import COMMENT_PREFIX, Iptables
from chaos.faults.local.peer_address import peer_address

# The checkout the proxy is started from (it runs `-m chaos.faults.latency_proxy`).
_REPO_ROOT = Path(__file__).resolve().parents[3]


class LatencyFaults:
    """The latency action of one backend (`backend` names it in every fault), and the proxies
    it started, so `stop_all` can stop them after a crashed run."""

    def __init__(
        self, backend: str, iptables: Iptables, *, python: str, proxy_start_timeout: float
    ) -> None:
        self.backend = backend
        self.iptables = iptables
        self.python = python
        self.proxy_start_timeout = proxy_start_timeout
        self._proxies: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def latency(
        self,
        target: NodeTarget,
        *,
        latency_ms: float,
        peer_host: str | None = None,
        direction: str = "egress",
    ) -> InjectedFault:
        if direction not in ("egress", "ingress", "both"):
            raise FaultError(f"latency direction must be egress, ingress or both: {direction!r}")
        if float(latency_ms) < 0:
            raise FaultError("latency_ms must be >= 0")
        host = peer_address(target, peer_host)
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
        details = {"id": fault_id, "peer_host": host, "latency_ms": latency_ms,
                   "direction": direction, "proxy_pid": proxy.pid, "proxy_port": proxy_port,
                   **self.iptables.tag(fault_id)}  # fmt: skip
        fault = InjectedFault("latency", target, self.backend, details=details)

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
        root = str(_REPO_ROOT)
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
            stop_proxy(proxy)
            raise FaultError(f"{target.name}: latency proxy did not start {text!r}")
        return int(text.split()[1])

    def _forget_proxy(self, fault_id: str) -> None:
        with self._lock:
            proxy = self._proxies.pop(fault_id, None)
        if proxy is not None:
            stop_proxy(proxy)

    def stop_all(self) -> None:
        """Stop every proxy this backend started (their rules go with the chain)."""
        with self._lock:
            proxies = list(self._proxies.values())
            self._proxies.clear()
        for proxy in proxies:
            stop_proxy(proxy)


def stop_proxy(proxy: subprocess.Popen) -> None:
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
