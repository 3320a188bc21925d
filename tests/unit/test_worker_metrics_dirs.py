"""`ratequeue.workers.remove_orphaned_metrics_dirs`: the metrics directory of a serving process
that died is removed; a running one's, and anything not named like one, is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ratequeue.workers import METRICS_DIR_PREFIX, remove_orphaned_metrics_dirs


def a_dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_the_metrics_dirs_of_dead_serving_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{a_dead_pid()}-abc"
    running = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{METRICS_DIR_PREFIX}notapid-ghi"
    other = tmp_path / "something-else"
    for directory in (dead, running, unrelated, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")

    remove_orphaned_metrics_dirs(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, unrelated.name, other.name]
    )
