"""The local testbed's supervisor: starts a killed API, controller or sensor process again with
its recorded command line (`TestbedNode.restart_command`), the way a restart policy does for
containers, and records each restart in `testbed.json` (the node's new pid, and the restart for
`ratequeue-chaos testbed status`).

A node that keeps dying is started again after a growing delay (0.5 s, doubling up to 30 s),
and at most `MAX_RESTARTS` times in `WINDOW` seconds: a crash loop does not spin. A paused
process is alive and left alone; an HTTP node whose port answers already (someone else started
it) is not started twice. It runs until `down` stops it, or its `testbed.json` is gone.

Not for: Redis nodes (never restarted here: a returning shard node rejoins through the
controllers' shard keeper, never as a second writable primary), or starting the testbed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos.errors import TestbedError
from chaos.testbed import (
    Restart,
    TestbedNode,
    TestbedState,
    load_state,
    process_alive,
    record_restart,
    spawn_command,
    state_path,
)
from common.nodes import HTTP_ROLES, Role

SUPERVISED_ROLES: frozenset[Role] = frozenset({"api", "lazarus", "sensor"})
MAX_RESTARTS = 5
WINDOW = 60.0
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
POLL_SECONDS = 0.25
# How long a freshly started supervisor waits for `up` to write the state file naming it.
STARTUP_GRACE = 30.0

log = logging.getLogger(__name__)


@dataclass
class RestartBudget:
    """One node's recent restarts: when the next may happen, and whether it may at all."""

    restarts: list[float] = field(default_factory=list)

    def delay(self, now: float) -> float | None:
        """Seconds to wait before the next restart, or None if the window's budget is spent."""
        self.restarts = [t for t in self.restarts if now - t < WINDOW]
        if len(self.restarts) >= MAX_RESTARTS:
            return None
        return min(FIRST_DELAY * 2 ** len(self.restarts), MAX_DELAY)


def _answers(node: TestbedNode) -> bool:
    try:
        with socket.create_connection((node.host, node.port), timeout=0.2):
            return True
    except OSError:
        return False


def _read(directory: Path) -> TestbedState | bool | None:
    """The testbed state if it names this process as its supervisor; False if the testbed is
    gone or supervised by another process (this one's work is over); None if it cannot be read
    this instant (being replaced: look again)."""
    if not state_path(directory).exists():
        return False
    try:
        state = load_state(directory)
    except TestbedError:
        return None
    if state.supervisor is None or state.supervisor.pid != os.getpid():
        return False
    return state


class Supervisor:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.budgets: dict[str, RestartBudget] = {}
        self.due: dict[str, float] = {}  # node name -> when to start it again
        self.gave_up: set[int] = set()  # pids of dead nodes not restarted (budget spent)

    def run(self) -> None:
        deadline = time.monotonic() + STARTUP_GRACE
        while not isinstance(_read(self.directory), TestbedState):  # `up` is writing it
            if time.monotonic() > deadline:
                log.warning("no testbed in %s names this supervisor; exiting", self.directory)
                return
            time.sleep(POLL_SECONDS)
        while (state := _read(self.directory)) is not False:
            if isinstance(state, TestbedState):
                self.round(state, time.monotonic())
            time.sleep(POLL_SECONDS)
        log.info("testbed in %s is gone or supervised elsewhere; exiting", self.directory)

    def round(self, state: TestbedState, now: float) -> None:
        for node in state.nodes:
            if node.role not in SUPERVISED_ROLES or node.restart_command is None:
                continue
            if process_alive(node) or node.pid in self.gave_up:
                self.due.pop(node.name, None)
                continue
            if node.name not in self.due:
                delay = self.budgets.setdefault(node.name, RestartBudget()).delay(now)
                if delay is None:
                    self.gave_up.add(node.pid)
                    note = f"gave up: {MAX_RESTARTS} restarts in {WINDOW:g} s"
                    gone = Restart(name=node.name, at=time.time(), old_pid=node.pid, note=note)
                    record_restart(self.directory, gone)
                    log.warning("%s: %s", node.name, note)
                    continue
                self.due[node.name] = now + delay
            if now >= self.due[node.name]:
                del self.due[node.name]
                self.restart(node, now)

    def restart(self, node: TestbedNode, now: float) -> None:
        assert node.restart_command is not None
        if node.role in HTTP_ROLES and _answers(node):
            log.info("%s: its port answers already; not started twice", node.name)
            return
        self.budgets[node.name].restarts.append(now)
        process = spawn_command(self.directory, node.name, node.restart_command)
        log.warning("%s: pid %d gone; started again as pid %d", node.name, node.pid, process.pid)
        restart = Restart(name=node.name, at=time.time(), old_pid=node.pid, pid=process.pid)
        if not record_restart(self.directory, restart):
            # Taken down meanwhile: the new process must not outlive the testbed.
            process.kill()


def supervise(directory: Path) -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s supervisor %(levelname)s: %(message)s")
    Supervisor(directory.resolve()).run()
