"""The testbed a `ratequeue-chaos run` starts for itself (no `--target`), tied to the run's life:
its processes run in sessions of their own, so a runner killed with SIGKILL would leave all of
them running. A reaper process beside each one waits for the runner to die and then stops the
testbed and removes its directory; and the run names the testbed in its journal directory
(`embedded-testbed-PID.json`), so `ratequeue-chaos halt` finds and stops one whose reaper was
killed too.

Not for: starting and stopping the testbed itself (see `testbed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chaos.errors import TestbedError
from chaos.processes import read_cmdline, running
from chaos.testbed import down, state_path, sweep

MARK_PREFIX = "embedded-testbed-"


def mark_path(journal_dir: Path, runner_pid: int) -> Path:
    return journal_dir / f"{MARK_PREFIX}{runner_pid}.json"


@contextlib.contextmanager
def embedded_testbed_dir(journal_dir: Path) -> Iterator[Path]:
    """A fresh directory for the run's testbed, named in `journal_dir` and watched by a reaper
    for as long as the block lasts; removed at the end. The testbed started in it must be
    stopped inside the block (the reaper only acts if this process dies first)."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="chaos-testbed-"))
    mark = mark_path(journal_dir, os.getpid())
    reaper: subprocess.Popen | None = None
    try:
        reaper = _start_reaper(directory, mark)
        mark.write_text(json.dumps({"directory": str(directory), "runner_pid": os.getpid(),
                                    "reaper_pid": reaper.pid}))  # fmt: skip
        yield directory
    finally:
        if reaper is not None:
            reaper.terminate()  # this process stopped the testbed: nothing left to reap
            reaper.wait()
        mark.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)


def _start_reaper(directory: Path, mark: Path) -> subprocess.Popen:
    """The reaper, in a session of its own (a Ctrl-C or a kill of the runner's group must not
    reach it), returned once it watches this process. It keeps nothing open in `directory`, or
    the testbed's `down` would sweep it as one of the testbed's processes."""
    argv = [sys.executable, "-m", "chaos", "testbed", "reap", "--dir", str(directory),
            "--runner", str(os.getpid()), "--mark", str(mark)]  # fmt: skip
    quiet = subprocess.DEVNULL
    reaper = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=quiet, stdin=quiet, cwd="/",
                              start_new_session=True, text=True)  # fmt: skip
    assert reaper.stdout is not None
    ready = reaper.stdout.readline()
    reaper.stdout.close()
    if ready.strip() != "watching":
        reaper.kill()
        reaper.wait()
        raise TestbedError("the embedded testbed's reaper did not start")
    return reaper


def reap(directory: Path, runner_pid: int, mark: Path) -> None:
    """Wait for `runner_pid` to end, then stop the testbed in `directory`, remove it and the
    mark naming it (the runner's own exit path stops the reaper first when it stopped the
    testbed itself)."""
    try:
        watch = os.pidfd_open(runner_pid)
    except ProcessLookupError:
        watch = None  # gone already
    print("watching", flush=True)
    if watch is not None:
        select.select([watch], [], [])  # readable once the process has ended
    stop_left_testbed(directory)
    mark.unlink(missing_ok=True)


def stop_left_testbed(directory: Path) -> list[str]:
    """Stop whatever of a testbed is still running in `directory` and remove the directory;
    the names or pids of the processes stopped."""
    stopped: list[str] = []
    if state_path(directory).exists():
        with contextlib.suppress(TestbedError):
            stopped += down(directory)
    stopped += sweep(directory)  # a testbed still starting has no testbed.json yet
    shutil.rmtree(directory, ignore_errors=True)
    return stopped


def _runner_alive(pid: int) -> bool:
    argv = read_cmdline(pid) or []
    return running(pid) and any(part.endswith("chaos") for part in argv) and "run" in argv


def _reaper_alive(pid: int) -> bool:
    """By command line: a recycled pid is someone else's."""
    argv = read_cmdline(pid) or []
    return bool(pid) and running(pid) and "testbed" in argv and "reap" in argv


def stop_orphaned_testbeds(journal_dir: Path, settle_seconds: float = 5.0) -> list[str]:
    """Stop the embedded testbeds named in `journal_dir` whose run is gone (killed, and its
    reaper with it, or the reaper not done yet); a sentence for each. A live run's testbed is
    left alone: halting the run stops it."""
    said = []
    for mark in sorted(journal_dir.glob(f"{MARK_PREFIX}*.json")):
        try:
            record = json.loads(mark.read_text())
            directory, runner = Path(record["directory"]), int(record["runner_pid"])
            reaper = int(record.get("reaper_pid") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half written, or removed meanwhile
        if _runner_alive(runner):
            continue
        deadline = time.monotonic() + settle_seconds
        while _reaper_alive(reaper) and mark.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # its reaper is stopping it right now
        if not mark.exists():
            continue
        if _reaper_alive(reaper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(reaper, signal.SIGKILL)
        stopped = stop_left_testbed(directory)
        mark.unlink(missing_ok=True)
        said.append(f"embedded testbed of killed run {runner} in {directory}: stopped "
                    f"{len(stopped)} processes")  # fmt: skip
    return said
