"""Faults on a node's process, by signal: kill (SIGKILL; undone by one restart when told how,
as stop is), pause (SIGSTOP, undone by SIGCONT),
resume (SIGCONT), stop (SIGTERM, then SIGKILL after a grace; undone by one restart when told
how, tried once: a failed one is not repeated, and the new pid is in `details["restarted"]`),
and start (a restart callable or an argv, then wait for the client port). Every signal
goes through a `CheckedProcess`.

Not for: network faults (`blackhole`, `latency`), or which process a pid may be
(`checked_process`).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.checked_process import CheckedProcess, wait_state


class ProcessFaults:
    """The process actions of one backend (`backend` names it in every fault)."""

    def __init__(self, backend: str, stop_grace: float) -> None:
        self.backend = backend
        self.stop_grace = stop_grace

    def _new(self, action: str, target: NodeTarget, **details: Any) -> InjectedFault:
        return InjectedFault(action=action, target=target, backend=self.backend, details=details)

    def kill(
        self,
        target: NodeTarget,
        *,
        expect: str | None = None,
        restart: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        wait_seconds: float = 10.0,
    ) -> InjectedFault:
        process = CheckedProcess(target, expect)
        try:
            process.signal(signal.SIGKILL)
            gone = process.wait_gone(5.0)
        finally:
            process.close()
        fault = self._new("kill", target, pid=target.pid, signal="SIGKILL", exited=gone)
        starter = self._starter(target, restart, command)
        if starter is not None:
            # Told how to boot it again (a store node): the rollback restarts it.
            fault.details["undo"] = "restart"
            fault.undo = self._restart_once(fault, target, starter, wait_seconds)
        return fault

    def pause(self, target: NodeTarget, *, expect: str | None = None) -> InjectedFault:
        process = CheckedProcess(target, expect)
        try:
            process.signal(signal.SIGSTOP)
            stopped = wait_state(process.pid, {"T", "t"}, 2.0)
        except BaseException:
            process.close()
            raise
        fault = self._new("pause", target, pid=target.pid, signal="SIGSTOP", stopped=stopped)

        def undo() -> None:
            try:
                process.signal(signal.SIGCONT)
            finally:
                process.close()

        fault.undo = undo
        return fault

    def resume(self, target: NodeTarget, *, expect: str | None = None) -> InjectedFault:
        process = CheckedProcess(target, expect)
        try:
            process.signal(signal.SIGCONT)
        finally:
            process.close()
        return self._new("resume", target, pid=target.pid, signal="SIGCONT")

    def stop(
        self,
        target: NodeTarget,
        *,
        expect: str | None = None,
        grace: float | None = None,
        restart: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        wait_seconds: float = 10.0,
    ) -> InjectedFault:
        grace = self.stop_grace if grace is None else float(grace)
        process = CheckedProcess(target, expect)
        try:
            process.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            deadline = time.monotonic() + grace
            killed = False
            while process.alive() and time.monotonic() < deadline:
                process.signal(signal.SIGTERM)
                process.wait_gone(min(0.2, max(0.0, deadline - time.monotonic())))
            if process.alive():
                process.signal(signal.SIGKILL)
                killed = True
                process.wait_gone(5.0)
        finally:
            process.close()
        fault = self._new("stop", target, pid=target.pid, grace=grace, sigkill=killed)
        starter = self._starter(target, restart, command)
        if starter is None:
            fault.details["undo"] = (
                "none: no restart callable or command given, the node stays stopped"
            )
        else:
            fault.details["undo"] = "restart"
            fault.undo = self._restart_once(fault, target, starter, wait_seconds)
        return fault

    def _restart_once(
        self,
        fault: InjectedFault,
        target: NodeTarget,
        starter: Callable[[float, dict[str, Any]], None],
        wait_seconds: float,
    ) -> Callable[[], None]:
        """The undo that boots a stopped or killed node again, the new pid noted in
        `details["restarted"]`."""

        def undo() -> None:
            # One attempt only: a second would start a second process on the same port
            # (e.g. after the first timed out waiting for it). Recorded before it starts.
            if "restarted" in fault.details:
                pid = fault.details["restarted"].get("pid")
                raise FaultError(
                    f"{target.name}: the restart was already attempted"
                    + (f" (pid {pid})" if pid else "")
                    + f" and failed: {fault.rollback_error}; not starting it again"
                )
            fault.details["restarted"] = {"at": time.time()}
            starter(wait_seconds, fault.details["restarted"])

        return undo

    def start(
        self,
        target: NodeTarget,
        *,
        restart: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        wait_seconds: float = 10.0,
    ) -> InjectedFault:
        starter = self._starter(target, restart, command)
        if starter is None:
            raise FaultError(f"{target.name}: start needs a restart callable or a command")
        started: dict[str, Any] = {}
        try:
            starter(wait_seconds, started)
        except FaultError as error:
            # The process may still come up: whoever tracks the node must know its pid.
            error.started_pid = started.get("pid")
            raise
        return self._new("start", target, **started)

    def _starter(
        self,
        target: NodeTarget,
        restart: Callable[[], None] | None,
        command: Sequence[str] | str | None,
    ) -> Callable[[float, dict[str, Any]], None] | None:
        """A function that starts the node (through `restart`, else `command`) and waits for its
        port, noting how (and the new pid) in the dict it is given as it goes, so a caller
        knows the pid even when the wait fails."""
        if restart is None and not command:
            return None
        if isinstance(command, str):
            raise FaultError(f"{target.name}: command must be an argv list, not a string")

        def start(wait_seconds: float, info: dict[str, Any]) -> None:
            if restart is not None:
                restart()
                info["via"] = "restart callable"
            else:
                try:
                    child = subprocess.Popen(
                        list(command or ()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, start_new_session=True,
                    )  # fmt: skip
                except OSError as error:
                    raise FaultError(f"{target.name}: cannot start {command!r}: {error}") from None
                info.update(via="command", command=list(command or ()), pid=child.pid)
            if wait_seconds and not wait_port(target.host, target.port, float(wait_seconds)):
                raise FaultError(
                    f"{target.name}: started, but {target.host}:{target.port} does not accept "
                    f"connections within {wait_seconds} s"
                )

        return start


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
