"""A machine with every core busy, for the benchmarks' `--busy` mode: one process per core
spinning at normal priority for as long as the context lasts, so a figure can be reported beside
the quiet one (issues 12 and 13 ask for both).

Not for: tests (they check behaviour, never timing), or a fault on a node (that is
`chaos.faults`' CPU burst on one process's host).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator


def every_core() -> int:
    """How many hogs keep every core of this machine busy."""
    return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """`count` processes spinning at normal priority for the duration; 0 starts nothing."""
    spin = [sys.executable, "-c", "while True: pass"]
    hogs: list[subprocess.Popen[bytes]] = []
    try:  # the ones started are stopped also when a later one cannot start
        for _ in range(count):
            quiet = subprocess.DEVNULL
            hogs.append(subprocess.Popen(spin, stdout=quiet, stderr=quiet))
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
