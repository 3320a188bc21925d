"""The testbed's supervisor, with real processes and signals: a SIGKILLed API or controller is
started again with its recorded command line and its new pid recorded, and `down` stops the
supervisor first and leaves nothing running."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from chaos.processes import running
from chaos.testbed import load_state, running_testbed, supervisor_alive
from tests.e2e.support import wait_for

pytestmark = pytest.mark.slow


def restarted(directory: Path, name: str, old_pid: int) -> int | None:
    node = load_state(directory).node(name)
    return node.pid if node.pid != old_pid and running(node.pid) else None


def test_the_supervisor_restarts_a_killed_api_and_controller_and_down_stops_everything(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "tb"
    with running_testbed(directory, shards=1, replicas=1, controllers=1,
                         supervise=True) as state:  # fmt: skip
        assert state.supervisor is not None
        pids = {state.supervisor.pid}
        for name in ("api", "lazarus1"):
            pids |= kill_and_see_it_started_again(directory, name)
        supervisor = load_state(directory).supervisor
        assert supervisor is not None and supervisor_alive(directory, supervisor)
        assert [r.name for r in supervisor.restarts] == ["api", "lazarus1"]
        pids |= {n.pid for n in load_state(directory).nodes}

    assert [pid for pid in pids if running(pid)] == []


def kill_and_see_it_started_again(directory: Path, name: str) -> set[int]:
    """SIGKILL node `name`, wait until it runs again under a new pid and answers; both pids."""
    node = load_state(directory).node(name)
    os.kill(node.pid, signal.SIGKILL)
    new = wait_for(f"{name} to be started again", lambda: restarted(directory, name, node.pid))
    url = f"http://{node.host}:{node.port}/healthz"
    wait_for(f"{name} to answer", lambda: healthy(url))
    return {node.pid, new}


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
