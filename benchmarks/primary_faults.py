"""The faults the failover benchmark (`failover_recovery`) puts on a shard primary, and how each
ends once its failover is measured.

- `kill`: SIGKILL. A death: the primary's host refuses at once.
- `pause`: SIGSTOP. A stall: nothing answers, only silence is evidence; the stopped process is
  killed once measured, and the run goes on as after a kill.
- `partition`: the primary's peer path blackholed the way the local fault backend does it
  (`chaos.faults.local`, action `blackhole`: DROP rules on its peer address and port, both
  directions, held connections too), while its client address still answers. Silence again,
  but from a live process. Once measured the process is killed, then the rules are removed (the
  run goes on as after a kill). Needs root and a working iptables; the rules live in a chain
  of this run's own, removed as a whole at the end (`network_faults`).

For: one benchmark's faults, with their undoing on every path. Not for: chaos experiments
(`chaos.faults` with its journal and rollbacks), or deciding what is measured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from enum import StrEnum

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.backend import LocalFaultBackend


class Fault(StrEnum):
    """What `--fault` does to the primary: a death (its host refuses at once), a stall or a
    partition of its peer path (nothing answers there; the process is killed once the
    failover is measured)."""

    kill = "kill"
    pause = "pause"
    partition = "partition"

    @property
    def label(self) -> str:
        """What was done to a ratequeue primary."""
        return {"kill": "SIGKILL", "pause": "SIGSTOP", "partition": "peer path cut"}[self.value]

    @property
    def sentinel_label(self) -> str:
        """What was done to a Sentinel primary: a partition cuts both of its addresses (its
        sentinels watch it where its clients reach it)."""
        return "both addresses cut" if self is Fault.partition else self.label


class BenchmarkFaultError(RuntimeError):
    """A fault could not be put in place or undone (the message says which and why). Not a
    `failover_recovery.BenchmarkError` (one kill not measured, the run goes on) on purpose: a
    cut that cannot be healed would skew every later measurement, so it ends the run."""


@contextlib.contextmanager
def network_faults(fault: Fault) -> Iterator[LocalFaultBackend | None]:
    """The local fault backend a `partition` run cuts paths with (None for other faults), on
    an iptables chain of this process's own; every rule of it is gone on the way out, whatever
    happened. Refused at once, saying why, where iptables faults cannot run."""
    if fault is not Fault.partition:
        yield None
        return
    backend = LocalFaultBackend(chain=f"RQBENCH{os.getpid()}")
    reason = backend.network_unavailable_reason()
    if reason is not None:
        raise BenchmarkFaultError(f"--fault partition: {reason}")
    try:
        yield backend
    finally:
        backend.cleanup_all()


class PrimaryFault:
    """One fault on one primary process. `inject` returns when it is complete; `end` (safe to
    call again, and called on every path) kills a stalled or cut-off process and removes the
    rules of a partition. `hosts`: the addresses a partition cuts at the node's port (its
    peer address for ratequeue; both for Sentinel, whose clients and sentinels share one)."""

    def __init__(
        self,
        fault: Fault,
        pid: int,
        target: NodeTarget,
        network: LocalFaultBackend | None,
        hosts: Sequence[str] = (),
    ) -> None:
        if fault is Fault.partition and (network is None or not hosts):
            raise ValueError("a partition needs the network backend and the hosts to cut")
        self.fault = fault
        self.pid = pid
        self.target = target
        self.network = network
        self.hosts = tuple(hosts)
        self.cuts: list[InjectedFault] = []
        self.install_seconds: float | None = None  # how long the rules took to put in place
        self._ended = False

    def inject(self) -> float:
        """Put the fault in place; returns when it was complete (Unix time)."""
        if self.fault is Fault.kill:
            os.kill(self.pid, signal.SIGKILL)
        elif self.fault is Fault.pause:
            os.kill(self.pid, signal.SIGSTOP)
        else:
            assert self.network is not None  # checked in __init__
            started = time.monotonic()
            try:
                for host in self.hosts:
                    self.cuts.append(self.network.inject("blackhole", self.target, peer_host=host))
            except FaultError as error:
                self.end()
                raise BenchmarkFaultError(f"cutting {self.target.name}: {error}") from None
            self.install_seconds = time.monotonic() - started
        return time.time()

    def end(self) -> None:
        """Kill a stalled or cut-off process (the run goes on as after a kill), then heal the
        cut paths. Nothing to do after a kill; nothing done twice."""
        if self._ended or self.fault is Fault.kill:
            return
        self._ended = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        errors = []
        for cut in self.cuts:
            try:
                cut.rollback()
            except FaultError as error:
                errors.append(str(error))
        if errors:
            raise BenchmarkFaultError(f"healing {self.target.name}: {'; '.join(errors)}")
