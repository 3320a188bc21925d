"""`LocalFaultBackend`: the local backend as the experiment runner and the agent see it. It
checks an action's params, refuses network actions where iptables does not work, hands the
action to the module that carries it out (`process_faults`, `blackhole`, `latency`,
`cpu_burst`), rolls a fault back by itself after `seconds`, and cleans up what a crashed run
left.

Not for: how any fault is done (the modules named above), remote machines or containers.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import shutil
import sys
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from chaos.errors import FaultError
from chaos.faults.base import FAULT_ACTIONS, InjectedFault, NodeTarget
from chaos.faults.local.blackhole import BlackholeFaults
from chaos.faults.local.cgroups import Cgroup, cgroup2_mount
from chaos.faults.local.cpu_burst import CpuBurstFaults
from chaos.faults.local.iptables import (
    COMMENT_PREFIX,
    DEFAULT_CHAIN,
    Iptables,
    iptables_unavailable_reason,
)
from chaos.faults.local.latency import LatencyFaults
from chaos.faults.local.process_faults import ProcessFaults

NETWORK_ACTIONS = frozenset({"blackhole", "latency"})


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
        self.processes = ProcessFaults(self.name, stop_grace)
        self.blackholes = BlackholeFaults(self.name, self.iptables)
        self.latencies = LatencyFaults(
            self.name, self.iptables, python=python, proxy_start_timeout=proxy_start_timeout
        )
        self.cpu_bursts = CpuBurstFaults(self.name, python=python, tag=f"{chain.lower()}-cpu")
        self._actions: dict[str, Callable[..., InjectedFault]] = {
            "kill": self.processes.kill,
            "pause": self.processes.pause,
            "resume": self.processes.resume,
            "stop": self.processes.stop,
            "start": self.processes.start,
            "blackhole": self.blackholes.blackhole,
            "latency": self.latencies.latency,
            "cpu": self.cpu_bursts.cpu,
        }
        self._network_reason: str | None = None
        self._network_checked = False

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
        handler = self._actions.get(action)
        if action not in FAULT_ACTIONS or handler is None:
            raise FaultError(f"local backend: unknown action {action!r}")
        seconds = params.pop("seconds", None)
        if action == "cpu" and seconds is not None:
            params.setdefault("length", seconds)  # the loops end by themselves then, too
        try:
            inspect.signature(handler).bind(target, **params)
        except TypeError as error:
            raise FaultError(f"local backend: {action}: {error}") from None
        if action in NETWORK_ACTIONS:
            reason = self.network_unavailable_reason()
            if reason is not None:
                raise FaultError(reason)
        fault = handler(target, **params)
        if seconds is not None and fault.undo is not None:
            self._rollback_after(fault, float(seconds))
        return fault

    # -- maintenance

    def cleanup_all(self) -> int:
        """Remove every rqchaos rule (the chains and their jumps), stop the latency proxies
        this backend started and the busy loops of this chain's cpu faults (also those a
        crashed run left), and put processes a one-node blackhole moved into a cgroup of this
        chain back into the root cgroup; returns how many rules there were."""
        self.latencies.stop_all()
        self.cpu_bursts.stop_all()
        if shutil.which(self.iptables.binary) is None or os.geteuid() != 0:
            return 0
        count = sum(self.iptables.remove_chain(table) for table in ("filter", "nat"))
        root = cgroup2_mount()
        if root is not None:
            for group in root.glob(f"{self.iptables.chain.lower()}-*"):
                with contextlib.suppress(FaultError):
                    Cgroup(root, group.name, 0, "/").restore()
        return count

    def cut_offs_holding(self, pids: Collection[int]) -> list[tuple[Path, set[int]]]:
        """The cgroups of this chain's one-process blackholes (cut-offs) holding one of `pids`,
        each with the pids it holds: what `remove_leftovers` would undo."""
        root = cgroup2_mount()
        if root is None:
            return []
        found = []
        for group in sorted(root.glob(f"{self.iptables.chain.lower()}-*")):
            try:
                held = {int(p) for p in (group / "cgroup.procs").read_text().split()}
            except OSError:
                continue
            if held & set(pids):
                found.append((group, held))
        return found

    def remove_leftovers(self, pids: Collection[int]) -> list[str]:
        """Undo the blackholes a run that died (its runner killed, no rollback) left on the
        processes `pids`: each cgroup of this chain holding one of them, with the rules of its
        fault, goes; the process is moved back into the root cgroup (where it came from died
        with the runner). Other faults, of other deployments on this machine, are left alone.
        Returns a line per fault undone."""
        root = cgroup2_mount()
        if root is None or shutil.which(self.iptables.binary) is None or os.geteuid() != 0:
            return []
        prefix = f"{self.iptables.chain.lower()}-"
        undone = []
        for group, held in self.cut_offs_holding(pids):
            comment = f"{COMMENT_PREFIX}{group.name[len(prefix) :]}"
            rules = [shlex.split(r)[2:] for r in self.iptables.rules("filter") if comment in r]
            for rule in rules:
                self.iptables.delete("filter", rule)
            Cgroup(root, group.name, 0, "/").restore()
            pid_list = ", ".join(str(p) for p in sorted(held))
            undone.append(f"blackhole {comment} left by an earlier run: {len(rules)} rules, "
                          f"pid {pid_list} moved out of cgroup {group.name}")  # fmt: skip
        return undone

    def rules(self) -> list[str]:
        """The rules currently in this backend's chains (filter, then nat)."""
        return self.iptables.rules("filter") + self.iptables.rules("nat")

    def _rollback_after(self, fault: InjectedFault, seconds: float) -> None:
        def later() -> None:
            with contextlib.suppress(FaultError):
                fault.rollback()

        timer = threading.Timer(max(0.0, seconds), later)
        timer.daemon = True
        timer.start()
        fault.details["rollback_after_seconds"] = seconds
