"""The few iptables operations the network faults need: one dedicated chain per table
(`RQCHAOS` by default, jumped to from filter INPUT and OUTPUT and from nat OUTPUT), created
idempotently, whose rules are tagged `rqchaos:<fault id>`; and whether iptables works here.

Not for: which rules a fault adds (`blackhole`, `latency`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence

from chaos.errors import FaultError

DEFAULT_CHAIN = "RQCHAOS"
COMMENT_PREFIX = "rqchaos:"
_JUMPS = {"filter": ("INPUT", "OUTPUT"), "nat": ("OUTPUT",)}


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

    def tag(self, fault_id: str) -> dict[str, str]:
        """How a fault's rules are found again: this chain, and their comment."""
        return {"chain": self.chain, "comment": f"{COMMENT_PREFIX}{fault_id}"}

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
