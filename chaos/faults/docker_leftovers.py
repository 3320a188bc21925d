"""Docker faults that outlive their runner: every Docker fault with an undo is written down in the
journal directory (`chaos-docker-faults.json`) while it is in force, and struck off when it is
rolled back. A runner killed with `kill -9` leaves its entries behind; the next
`ratequeue-chaos run` or `ratequeue-chaos halt` on that journal directory undoes them (unpause,
start, reconnect to the networks with the old address, kill the cpu loops) and names each in its
journal or output. This is the Docker counterpart of the local backend's tagged iptables rules
and busy loops, which `cleanup_all()` finds on the machine itself: a disconnected network leaves
no trace on the engine to find, so the trace is kept beside the journals.

An entry is written before its fault is applied (its intent) and marked applied after, so a
runner killed between the two (a `stop` waits up to its timeout) still leaves a record; undoing
an entry whose fault was never applied changes nothing: each undo acts only on the state the
fault makes (a paused container, an exited one that was running before, a network it is not on).

An entry whose runner still lives is left alone: its own rollback or timer will undo it. Only
the host that wrote an entry can tell whether its runner lives, so an entry written on another
host (another machine, or another container's hostname) is left alone too, and said so.

Not for: injecting faults (`chaos.faults.docker`) or the local backend's leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from docker.models.containers import Container
from pydantic import BaseModel, ValidationError

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.processes import read_cmdline, running

log = logging.getLogger(__name__)

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
    status_before: str | None = None
    """The container's status when the fault was written down: an undo brings back only what
    the fault changed (a container already exited before a stop is not started)."""
    applied: bool = False
    """False from the moment it is written down until the engine has applied it."""
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
        applied = "" if self.applied else " (written down before it was applied; maybe never was)"
        return (
            f"{self.action} of {self.target} (container {self.container}) injected at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.injected_at))} by "
            f"{self.runner_host}:{self.runner_pid}{due}{applied}"
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

    def mark_applied(self, fault_id: str) -> None:
        with self._locked() as entries:
            entries[:] = [e.model_copy(update={"applied": True}) if e.id == fault_id else e
                          for e in entries]  # fmt: skip

    def remove(self, fault_id: str) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.id != fault_id]

    def entries(self) -> list[PendingFault]:
        with self._locked() as entries:
            return list(entries)

    def unsettled(self) -> list[PendingFault]:
        """Entries no runner of this host will undo: a dead runner's (left after
        `undo_leftovers` only when it could not undo them) and other hosts'."""
        here = os.uname().nodename
        return [e for e in self.entries() if e.runner_host != here or not _runner_alive(e)]

    def undo_leftovers(self, client: docker.DockerClient | None = None) -> list[str]:
        """Undo every entry whose runner is gone; one line per entry (what it was, and what
        was done, or why it could not be). An entry that could not be undone for a reason
        that may pass (engine refused, unreachable) stays for the next try; one whose
        container is gone is struck off (nothing left to undo)."""
        with self._locked() as entries:
            here = os.uname().nodename
            lines = [f"{e.describe()}: left alone: written on host {e.runner_host}, not "
                     f"{here}; only that host can tell whether its runner still lives"
                     for e in entries if e.runner_host != here]  # fmt: skip
            orphans = [e for e in entries if e.runner_host == here and not _runner_alive(e)]
            if not orphans:
                return lines
            own = client is None
            try:
                engine = client or docker.from_env(timeout=30)
            except docker.errors.DockerException as error:
                return lines + [f"{e.describe()}: not undone: Docker engine unreachable: {error}"
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


class FaultIntent:
    """One Docker fault on its way in, in the pending file (with `pending`; else only in memory):
    `write` before the engine is asked to apply it (the entry its rollback undoes, by
    `undo_on_engine`, with the status it had before), `applied` once it is (the rollback then
    strikes it off), `abandon` when applying failed."""

    def __init__(
        self,
        pending: PendingDockerFaults | None,
        action: str,
        target: NodeTarget,
        container: Container,
        what: str,
        seconds: float | None,
    ) -> None:
        self.pending = pending
        self.action = action
        self.target = target
        self.container = container
        self.what = what
        self.seconds = seconds
        self.entry: PendingFault | None = None

    def write(
        self,
        undo: Undo,
        *,
        networks: list[tuple[str, dict[str, Any]]] | None = None,
        pidfile: str | None = None,
    ) -> None:
        """Write the fault down; a file that cannot be written refuses the fault (FaultError),
        nothing applied."""
        now = time.time()
        entry = PendingFault(
            id=uuid.uuid4().hex,
            action=self.action,
            target=self.target.name,
            container=self.container.name,
            container_id=self.container.id,
            undo=undo,
            networks=networks or [],
            pidfile=pidfile,
            status_before=self.container.status,
            injected_at=now,
            due_at=None if self.seconds is None else now + self.seconds,
            runner_host=os.uname().nodename,
            runner_pid=os.getpid(),
        )
        self.entry = entry  # the in-process rollback undoes it too, written down or not
        if self.pending is None:
            return
        try:
            self.pending.add(entry)
        except OSError as error:
            raise FaultError(
                f"{self.what}: not applied: it could not be written down first in "
                f"{self.pending.path} (a runner that died with it in force would leave it "
                f"unrecorded): {error}"
            ) from error

    def applied(self, fault: InjectedFault) -> None:
        """Mark the entry applied and have the fault's rollback strike it off. The fault is in
        force and already written down, so a file that fails now is said in its details and
        logged, never raised: its entry is undone by the next run, harmlessly if already undone.
        """
        if self.entry is None or self.pending is None or fault.undo is None:
            return
        pending, entry_id = self.pending, self.entry.id
        fault.details["pending_id"] = entry_id
        try:
            pending.mark_applied(entry_id)
        except OSError as error:
            fault.details["pending_error"] = f"could not mark it applied: {error}"
            log.warning("%s: applied, but %s: %s", self.what, pending.path, error)
        original = fault.undo

        def undo() -> None:
            original()
            try:
                pending.remove(entry_id)
            except OSError as error:
                fault.details["pending_error"] = f"undone, but still written down: {error}"
                log.warning("%s: undone, but still in %s: %s", self.what, pending.path, error)

        fault.undo = undo

    def abandon(self, engine: docker.DockerClient) -> None:
        """Applying failed: undo whatever part of it may be in force (nothing, when nothing was
        applied) and strike the entry off; when that fails too, the entry stays for the next
        run or halt."""
        if self.entry is None or self.pending is None:
            return
        try:
            undo_on_engine(engine, self.entry)
            self.pending.remove(self.entry.id)
        except Exception as error:  # the injection's own error is the one raised
            log.warning("%s failed; its entry stays in %s: %s", self.what, self.pending.path,
                        error)  # fmt: skip


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
        if container.status == "paused" and entry.status_before != "paused":
            container.unpause()
            return "unpaused"
        return f"already {container.status}"
    if entry.undo == "start":
        if entry.status_before not in (None, "running", "restarting"):
            return f"left {container.status}: it was {entry.status_before} before the fault"
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
    done = reconnect(engine, entry.container_id, entry.networks)
    return "reconnected to " + ", ".join(done) if done else "already on its networks"


def cpu_loops_killer(pidfile: str) -> str:
    """The sh command that ends the docker cpu fault's loops listed in `pidfile`."""
    return f"[ -f {pidfile} ] && kill $(cat {pidfile}); rm -f {pidfile}"


def reconnect(
    engine: docker.DockerClient, container_id: str, networks: list[tuple[str, dict[str, Any]]]
) -> list[str]:
    """Connect the container to each network again, with its aliases and its old address; a
    network it is already on is skipped (a rollback twice, or a cut never made). What was done,
    one line a network reconnected.

    The old address or none: peers know a node by its address (staging's topology lists it), so
    a node back under another address is lost to them, and its old address may by now be
    another node's. When the engine will not give the old address back (taken meanwhile), this
    raises a FaultError saying so and leaves the container off that network. Only where the
    engine picks every address itself (the default bridge, or a network without a configured
    subnet) is the container connected with a new one, and the line says which."""
    done = []
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
                done.append(f"{network_name} with its old address {address}")
                continue
            except docker.errors.APIError as error:
                said = str(getattr(error, "explanation", None) or error)
                if "user configured subnets" not in said:
                    raise FaultError(
                        f"container {container_id[:12]} not reconnected to {network_name}: "
                        f"its old address {address} cannot be had ({said}); it is left off "
                        "that network rather than put back under an address its peers do not "
                        "know (free the address, then run the rollback again)"
                    ) from error
        network.connect(container_id, **options)
        now = _address_on(engine, container_id, network_name)
        if address == now:
            done.append(f"{network_name} with its old address {now} (picked by the engine)")
        else:
            had = f" (it had {address})" if address else ""
            done.append(f"{network_name} with a new address {now} picked by the engine{had}")
    return done


def _address_on(engine: docker.DockerClient, container_id: str, network_name: str) -> str:
    container = engine.containers.get(container_id)
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    return (networks.get(network_name) or {}).get("IPAddress") or "none"


def _runner_alive(entry: PendingFault) -> bool:
    """Whether the runner that wrote `entry` on this host still runs (the caller leaves other
    hosts' entries alone: their pids mean nothing here)."""
    if entry.runner_pid == os.getpid():
        return False  # this process finds its own leftovers only after its faults' runs ended
    argv = read_cmdline(entry.runner_pid) or []
    return running(entry.runner_pid) and any(part.endswith("chaos") for part in argv)
