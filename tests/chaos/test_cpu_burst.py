"""The local backend's cpu fault with real processes: a burst starts one busy loop per core
asked for, its rollback stops them, `cleanup_all` finds the loops a crashed run left (and only
those), and a loop ends by itself after its length. Processes are checked in /proc.

Not for: the docker or gremlin cpu faults, or what a burst does to the testbed (the
`primary_cpu_burst` scenario).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.faults.base import NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.cpu_burst import BUSY_LOOP, is_loop
from chaos.processes import read_cmdline, running

PRIMARY = NodeTarget(name="s0-primary", role="primary", shard="s0", port=7000)


@pytest.fixture
def backend() -> Iterator[LocalFaultBackend]:
    faults = LocalFaultBackend(chain=f"RQT{uuid.uuid4().hex[:10].upper()}")
    yield faults
    faults.cpu_bursts.stop_all()


def cpu_ticks(pid: int) -> int:
    """User plus system time the process has used, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_loops(pids: list[int], tag: str, timeout: float = 5.0) -> bool:
    """Until every pid runs the loop (a child reads as its parent until it has exec'd)."""
    deadline = time.monotonic() + timeout
    while not all(is_loop(read_cmdline(pid), tag) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_burst_keeps_n_loops_busy_until_its_rollback_stops_them(
    backend: LocalFaultBackend,
) -> None:
    fault = backend.inject("cpu", PRIMARY, cores=2, length=30)
    pids = fault.details["pids"]
    assert len(pids) == 2 and fault.details["cores"] == 2
    assert wait_loops(pids, backend.cpu_bursts.tag)
    before = {pid: cpu_ticks(pid) for pid in pids}
    time.sleep(0.5)
    assert all(cpu_ticks(pid) > before[pid] for pid in pids)  # they spin, they do not sleep
    fault.rollback()
    assert wait_gone(pids)
    # The journal shows the burst happened: each loop's CPU seconds, read at the rollback.
    burnt = fault.details["cpu_seconds"]
    assert set(burnt) == {str(pid) for pid in pids} and all(burnt[str(p)] > 0 for p in pids)
    fault.rollback()  # twice is fine


def test_every_core_is_the_default(backend: LocalFaultBackend) -> None:
    fault = backend.inject("cpu", PRIMARY, length=30)
    # The cores this process may run on, not the machine's count (a cgroup may allow fewer).
    assert len(fault.details["pids"]) == len(os.sched_getaffinity(0))
    fault.rollback()
    assert wait_gone(fault.details["pids"])


def test_cleanup_all_stops_the_loops_a_crashed_run_left_and_nothing_else(
    backend: LocalFaultBackend,
) -> None:
    fault = backend.inject("cpu", PRIMARY, cores=2, length=30)
    pids = fault.details["pids"]
    assert wait_loops(pids, backend.cpu_bursts.tag)
    # Not a loop: the same marker and program, other code.
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", f"{backend.cpu_bursts.tag}:x", "30"]
    )
    try:
        # A new backend on the same chain knows none of them: what runs after a crash.
        after_crash = LocalFaultBackend(chain=backend.iptables.chain)
        after_crash.cleanup_all()
        assert wait_gone(pids)
        assert decoy.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(decoy.pid, signal.SIGKILL)
        decoy.wait()


def test_a_loop_ends_by_itself_after_its_length(backend: LocalFaultBackend) -> None:
    fault = backend.inject("cpu", PRIMARY, cores=1, length=0.3)
    assert wait_gone(fault.details["pids"], timeout=5)


def test_the_marker_matches_only_this_backends_loops() -> None:
    argv = [sys.executable, "-c", BUSY_LOOP, "rqa-cpu:1234", "5"]
    assert is_loop(argv, "rqa-cpu")
    assert not is_loop(argv, "rqb-cpu")
    assert not is_loop([sys.executable, "-c", "pass", "rqa-cpu:1234", "5"], "rqa-cpu")
    # The program too: another interpreter handed the same arguments is not a loop.
    assert not is_loop(["/bin/sh", *argv[1:]], "rqa-cpu")
    assert is_loop(["python3.11", *argv[1:]], "rqa-cpu")
