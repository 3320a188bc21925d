"""The pending Docker faults file without an engine: whose entries a run may undo. Only the host
that wrote an entry can tell whether its runner lives; another host's entries are left alone
and said so.

Not for: undoing faults on a real engine (tests/chaos/test_docker_faults.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from chaos.faults.docker_leftovers import PendingDockerFaults, PendingFault


class NoEngine:
    """An engine client that must not be asked anything."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was asked for {name}")


def _entry(host: str, pid: int) -> PendingFault:
    return PendingFault(id="f1", action="pause", target="s0-a", container="rq-s0-a",
                        container_id="c0ffee", undo="unpause", injected_at=time.time(),
                        runner_host=host, runner_pid=pid, applied=True)  # fmt: skip


def test_an_entry_written_on_another_host_is_left_alone_and_named(tmp_path: Path) -> None:
    pending = PendingDockerFaults(tmp_path)
    pending.add(_entry("another-host", 1))
    [line] = pending.undo_leftovers(NoEngine())  # type: ignore[arg-type]
    assert line.startswith("pause of s0-a (container rq-s0-a)")
    assert "left alone: written on host another-host" in line
    assert [e.id for e in pending.entries()] == ["f1"]
