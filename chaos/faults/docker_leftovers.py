"""Docker faults that outlive their runner: every Docker fault with an undo is written down in the
journal directory (`chaos-docker-faults.json`) while it is in force, and struck off when it is
rolled back. A runner killed with `kill -9` leaves its entries behind; the next
`ratequeue-chaos run` or `ratequeue-chaos halt` on that journal directory undoes them (unpause,
start, reconnect to the networks with the old address, kill the cpu loops) and names each in its
journal or output. This is the Docker counterpart of the local backend's tagged iptables rules
and busy loops, which `cleanup_all()` finds on the machine itself: a disconnected network leaves
no trace on the engine to find, so the trace is kept beside the journals.

An entry whose runner still lives (same host, that pid a running `ratequeue-chaos run`) is left
alone: its own rollback or timer will undo it.

Not for: injecting faults (`chaos.faults.docker`) or the local backend's leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from pydantic import BaseModel, ValidationError

from chaos.processes import read_cmdline, running

PENDING_FILE = "chaos-docker-faults.json"

Undo = Literal["unpause", "start", "reconnect", "kill_loops"]


class PendingFault(BaseModel):
    """One Docker fault in force, with what undoes it without the process that injected it."""

    id: str
    action: str
    target: str
    container: str
    container_id: str
    undo: Undo
    networks: list[tuple[str, dict[str, Any]]] = []
    """reconnect: each network cut, with the endpoint settings it had (aliases, address)."""
    pidfile: str | None = None
    """kill_loops: the file in the container that lists the cpu loops' pids."""
    injected_at: float
    due_at: float | None = None
    """When its timed rollback was due (None: at the end of the run)."""
    runner_host: str
    runner_pid: int

    def describe(self) -> str:
        due = (
            f", due back at {time.strftime('%H:%M:%S', time.localtime(self.due_at))}"
            if (self.due_at is not None)
            else ""
        )
        return (
            f"{self.action} of {self.target} (container {self.container}) injected at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.injected_at))} by "
            f"{self.runner_host}:{self.runner_pid}{due}"
        )


class PendingDockerFaults:
    """The file of Docker faults in force for one journal directory. Safe across threads (a
    timed rollback strikes its entry off from a timer) and processes (an flock beside it)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / PENDING_FILE
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[PendingFault]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            before = [e.model_dump() for e in entries]
            yield entries
            if [e.model_dump() for e in entries] != before:
                scratch = self.path.with_suffix(".tmp")
                scratch.write_text(json.dumps([e.model_dump() for e in entries], indent=1))
                os.replace(scratch, self.path)

    def _read(self) -> list[PendingFault]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # a torn file from another era: nothing in it can be trusted to undo
        entries = []
        for item in raw if isinstance(raw, list) else []:
            with contextlib.suppress(ValidationError, TypeError):
                entries.append(PendingFault.model_validate(item))
        return entries

    def add(self, entry: PendingFault) -> None:
        with self._locked() as entries:
            entries.append(entry)

    def remove(self, fault_id: str) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.id != fault_id]

    def entries(self) -> list[PendingFault]:
        with self._locked() as entries:
            return list(entries)

    def undo_leftovers(self, client: docker.DockerClient | None = None) -> list[str]:
        """Undo every entry whose runner is gone; one line per entry (what it was, and what
        was done, or why it could not be). An entry that could not be undone for a reason
        that may pass (engine refused, unreachable) stays for the next try; one whose
        container is gone is struck off (nothing left to undo)."""
        with self._locked() as entries:
            orphans = [e for e in entries if not _runner_alive(e)]
            if not orphans:
                return []
            own = client is None
            lines = []
            try:
                engine = client or docker.from_env(timeout=30)
            except docker.errors.DockerException as error:
                return [f"{e.describe()}: not undone: Docker engine unreachable: {error}"
                        for e in orphans]  # fmt: skip
            try:
                for entry in orphans:
                    try:
                        done = undo_on_engine(engine, entry)
                    except docker.errors.NotFound:
                        done = "its container is gone; nothing to undo"
                    except Exception as error:  # the engine's answer: said, kept for next time
                        lines.append(f"{entry.describe()}: not undone: {error}")
                        continue
                    entries.remove(entry)
                    lines.append(f"{entry.describe()}: {done}")
            finally:
                if own:
                    engine.close()
            return lines


def undo_docker_leftovers(journal_dir: Path) -> list[str]:
    """Undo the Docker faults dead runners left in `journal_dir` (see the module docstring);
    nothing is asked of any engine when none was written down there."""
    pending = PendingDockerFaults(journal_dir)
    if not pending.path.exists():
        return []
    return pending.undo_leftovers()


def undo_on_engine(engine: docker.DockerClient, entry: PendingFault) -> str:
    """Undo one fault on the engine; what was done, in a few words."""
    container = engine.containers.get(entry.container_id)
    if entry.undo == "unpause":
        if container.status == "paused":
            container.unpause()
            return "unpaused"
        return f"already {container.status}"
    if entry.undo == "start":
        if container.status != "running":
            container.start()
            return "started"
        return "already running"
    if entry.undo == "kill_loops":
        if container.status != "running" or entry.pidfile is None:
            return f"container {container.status}; its cpu loops ended with it"
        pidfile = entry.pidfile
        container.exec_run(["sh", "-c", cpu_loops_killer(pidfile)])
        return "cpu loops killed"
    reconnect(engine, entry.container_id, entry.networks)
    return "reconnected to " + ", ".join(name for name, _ in entry.networks)


def cpu_loops_killer(pidfile: str) -> str:
    """The sh command that ends the docker cpu fault's loops listed in `pidfile`."""
    return f"[ -f {pidfile} ] && kill $(cat {pidfile}); rm -f {pidfile}"


def reconnect(
    engine: docker.DockerClient, container_id: str, networks: list[tuple[str, dict[str, Any]]]
) -> None:
    """Connect the container to each network again, with its aliases, and with its old address
    where the engine accepts a chosen one (user-defined networks with a subnet); a network it
    is already on is skipped (a rollback twice, or a cut never made)."""
    for network_name, settings in networks:
        network = engine.networks.get(network_name)
        network.reload()
        if any(c.id == container_id for c in network.containers):
            continue
        aliases = [a for a in settings.get("Aliases") or [] if not container_id.startswith(a)]
        options: dict[str, Any] = {"aliases": aliases or None}
        links = settings.get("Links")
        if links:
            options["links"] = links
        address = settings.get("IPAddress")
        if address and network_name != "bridge":
            try:
                network.connect(container_id, ipv4_address=address, **options)
                continue
            except docker.errors.APIError:
                pass  # the engine does not allow a chosen address here: take any
        network.connect(container_id, **options)


def _runner_alive(entry: PendingFault) -> bool:
    if entry.runner_host != os.uname().nodename:
        return False  # another machine's (or container's) runner: it is not ours to ask
    if entry.runner_pid == os.getpid():
        return False  # this process finds its own leftovers only after its faults' runs ended
    argv = read_cmdline(entry.runner_pid) or []
    return running(entry.runner_pid) and any(part.endswith("chaos") for part in argv)
