"""Which process a signal may reach: a pidfd opened before the program check (so a pid
recycled between the check and the signal is never hit), and the check itself: the program
(never a word among its arguments) must be the node's, and a Redis node's own `:PORT` must be
in its command line.

Not for: deciding which signal to send (`process_faults`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

from chaos.errors import FaultError
from chaos.faults.base import NodeTarget
from chaos.processes import (
    process_state,
    read_cmdline,
    read_comm,
    running,
    runs_program,
)
from common.nodes import PROGRAMS_OF_ROLE, REDIS_ROLES


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


def holds_port(line: str, port: int) -> bool:
    """`:PORT` occurs in `line` as a whole port number."""
    return re.search(rf":{port}(?!\d)", line) is not None


class CheckedProcess:
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
            runs = holds_port(line, target.port)
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


def wait_state(pid: int, wanted: set[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) in wanted:
            return True
        time.sleep(0.005)
    return False
