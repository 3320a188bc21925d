"""The cpu fault on the local backend: keep `cores` cores busy at normal priority for a while,
with one busy-loop Python process per core, then stop them.

A CPU burst loads a host, not a process: the target node only names the fault. On the embedded
testbed every node (primaries, replicas, sensors, controllers, the API) shares this machine, so
"the primary's host" is this machine, and a burst aimed at the primary loads every node alike,
as a busy neighbour on a real host would.

Each loop ends by itself after `length` seconds, so a crashed runner leaves no busy core for
long; the rollback notes each loop's CPU seconds (from /proc/PID/stat, so the journal shows
the burst burnt CPU) and kills the loops at once. Every loop carries a marker in its command
line (`<tag>:<fault id>`), so `stop_all` finds and kills the loops a crashed run left behind, and
never another process (its program must be a Python interpreter and its code exactly the one
started here).

Not for: CPU load inside a container (the docker backend) or on a Gremlin target (the gremlin
backend); process or network faults.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import uuid
from pathlib import Path

from chaos.errors import FaultError
from chaos.faults.base import (
    DEFAULT_LENGTH,
    InjectedFault,
    NodeTarget,
    check_cores,
    check_length,
)
from chaos.processes import read_cmdline

# The program a loop runs: a Python interpreter, by argv[0]'s basename.
PYTHON_PROGRAM = re.compile(r"python3?(\.\d+)?")

# One core's worth of work: spin until the deadline (argv: marker, length in seconds). The
# clock is read on every turn, which keeps the loop on the CPU and lets it end on time.
BUSY_LOOP = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


def loop_count(cores: object) -> int:
    """How many loops to start: `cores`, or every core this process may run on when None."""
    count = check_cores(cores)
    # The cores this process may use (a cgroup or taskset may allow fewer than the machine has).
    return len(os.sched_getaffinity(0)) if count is None else count


class CpuBurstFaults:
    """The cpu action of one backend (`backend` names it in every fault), and the loops it
    started, by fault id, so a rollback and `stop_all` find them."""

    def __init__(self, backend: str, *, python: str, tag: str) -> None:
        self.backend = backend
        self.python = python
        self.tag = tag  # the marker's prefix: one backend's loops, not another's
        self._bursts: dict[str, list[subprocess.Popen]] = {}
        self._lock = threading.Lock()

    def cpu(
        self, target: NodeTarget, *, cores: int | None = None, length: float = DEFAULT_LENGTH
    ) -> InjectedFault:
        count = loop_count(cores)
        seconds = check_length(length)
        fault_id = uuid.uuid4().hex[:12]
        marker = f"{self.tag}:{fault_id}"
        argv = [self.python, "-c", BUSY_LOOP, marker, repr(seconds)]
        loops: list[subprocess.Popen] = []
        with self._lock:
            self._bursts[fault_id] = loops
        try:
            for _ in range(count):
                quiet = subprocess.DEVNULL
                loop = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet,
                                        start_new_session=True)  # fmt: skip
                loops.append(loop)
        except OSError as error:
            self._forget(fault_id)
            raise FaultError(f"{target.name}: cannot start a busy loop: {error}") from None
        details = {"id": fault_id, "cores": count, "length": seconds, "marker": marker,
                   "pids": [loop.pid for loop in loops], "host": "this machine"}  # fmt: skip
        fault = InjectedFault("cpu", target, self.backend, details=details)

        def undo() -> None:
            # Read before the kill: the journal shows the burst really burnt CPU.
            details["cpu_seconds"] = {str(loop.pid): cpu_seconds(loop.pid) for loop in loops}
            self._forget(fault_id)

        fault.undo = undo
        return fault

    def _forget(self, fault_id: str) -> None:
        with self._lock:
            loops = self._bursts.pop(fault_id, [])
        for loop in loops:
            stop_loop(loop)

    def stop_all(self) -> list[int]:
        """Kill the loops this backend started, and any loop of this tag a crashed run left
        (found in /proc by program, code and marker); returns the pids killed."""
        with self._lock:
            started = [loop for loops in self._bursts.values() for loop in loops]
            self._bursts.clear()
        killed = [loop.pid for loop in started if loop.poll() is None]
        for loop in started:
            stop_loop(loop)
        for pid in self.leftovers():
            if kill_checked(pid, self.tag):
                killed.append(pid)
        return killed

    def leftovers(self) -> list[int]:
        """Pids of running loops with this backend's tag (whoever started them)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and is_loop(read_cmdline(int(entry.name)), self.tag):
                found.append(int(entry.name))
        return found


def is_loop(argv: list[str] | None, tag: str) -> bool:
    """Is this the command line of a busy loop of `tag`? The program must be a Python
    interpreter (argv[0]'s basename `python`, `python3`, `python3.11`...) and the code ours,
    exactly."""
    return (
        argv is not None
        and len(argv) == 5
        and PYTHON_PROGRAM.fullmatch(os.path.basename(argv[0])) is not None
        and argv[1:3] == ["-c", BUSY_LOOP]
        and argv[3].startswith(f"{tag}:")
    )


def kill_checked(pid: int, tag: str) -> bool:
    """SIGKILL `pid` if it still is a loop of `tag`, through a pidfd opened before the check
    (a pid recycled in between is never hit)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not is_loop(read_cmdline(pid), tag):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, seconds) process `pid` has used so far, from /proc/PID/stat;
    None once it is gone (a loop that ended by itself and was reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) in parentheses: utime is the 14th
    # field of the line, stime the 15th, in clock ticks.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return round(ticks / os.sysconf("SC_CLK_TCK"), 2)


def stop_loop(loop: subprocess.Popen) -> None:
    """Kill one loop this process started (if it still runs) and reap it, waiting at most 3 s."""
    if loop.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            loop.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        loop.wait(timeout=3)
