"""The pending Docker faults file without an engine: whose entries a run may undo. Only the host
that wrote an entry can tell whether its runner lives; another host's entries are left alone
and said so.

Not for: undoing faults on a real engine (tests/chaos/test_docker_faults.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import docker
import docker.errors
from typer.testing import CliRunner

from chaos.cli import app
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


def test_halt_exits_1_when_a_leftover_is_not_undone(tmp_path: Path) -> None:
    # Written on another host: this one cannot tell whether its runner lives, so it stays.
    PendingDockerFaults(tmp_path).add(_entry("another-host", 1))
    result = CliRunner().invoke(app, ["halt", "--journal-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "left alone" in result.output and "1 fault(s) still in force" in result.output


def test_halt_exits_0_when_every_leftover_is_undone(tmp_path: Path) -> None:
    pending = PendingDockerFaults(tmp_path)
    pending.add(_entry(os.uname().nodename, os.getpid()))  # a runner of this host, now gone

    class EngineWithoutIt:
        """An engine on which the fault's container was removed since."""

        class containers:  # the SDK client's attribute
            @staticmethod
            def get(container_id: str) -> object:
                raise docker.errors.NotFound(f"no such container: {container_id}")

        def close(self) -> None:
            pass

    with mock.patch.object(docker, "from_env", lambda **_: EngineWithoutIt()):
        result = CliRunner().invoke(app, ["halt", "--journal-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "its container is gone" in result.output and pending.entries() == []
