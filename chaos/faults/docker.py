"""The Docker fault backend: kill, pause/resume, stop/start, blackhole and load the CPU of a node
that runs as a container on a real Docker engine, through the Docker SDK (`docker` package).
`NodeTarget.container` is the container's name (or id); the engine is found the usual way
(`DOCKER_HOST`, else the local socket) unless a `base_url` or client is given.

Actions and their rollbacks:
- `kill`: `container.kill()` (SIGKILL, or `signal=`), waits until the container has exited. No
  undo by default: a killed primary must not silently come back as a primary (the controller or
  testbed decides what it becomes); `restart=True` makes the rollback start it again.
- `pause` (freezer cgroup: the process stops answering, its sockets stay open): undo unpauses.
- `resume`, `start`: the plain inverse actions, no undo.
- `stop`: `container.stop(timeout=)` (SIGTERM, then SIGKILL after `timeout` s): undo starts it.
- `blackhole`: disconnects the container from every network it is on (or only `network=`; or, when
  the target has a `peer_host` and the container is on several networks, only the network where it
  has that address: its peer path, as on staging, so clients still reach it; a cut wider than the
  peer path says why in the fault's `note`, which the journal shows), undo reconnects it with its
  aliases and its old address (refused, with a FaultError, when the address is taken meanwhile; a
  new one only where the engine picks every address). Host-network containers share the host's
  network stack, so there is nothing to disconnect: blackhole is refused with a FaultError that
  points to the local backend's iptables blackhole, which cuts a port on loopback.
- `cpu`: `exec`s a shell in the container (and waits for it) that starts `cores` busy loops
  in the background (default: as many as the container sees cores, `nproc`), each under
  `timeout LENGTH` so it ends by itself (param `length`, default 60 s, rounded up to whole
  seconds), notes their pids in a file in the container's /tmp and checks they run; no loop
  running (e.g. an image without `sh`, as the project's own Redis image) is a FaultError
  saying why. Undo kills them (and so their `sh` loops) through that file. The load is on
  the container's host, at normal priority (the container's own CPU limit applies).
- `latency` is not supported (use the local backend's TCP proxy).
`seconds=` on pause/stop (and on the others that have an undo) rolls the fault back after that long
from a timer thread; an earlier `rollback()` cancels the timer. With `pending=` (the runner passes
its journal directory's file), every fault with an undo is written down before it is applied and
struck off when it is rolled back, so one left by a runner that died is undone by the next
`ratequeue-chaos run` or `ratequeue-chaos halt` (`chaos.faults.docker_leftovers`).

Every engine or container problem (engine unreachable, container missing, API error) surfaces as
a FaultError naming the container and the cause.

Not for: building the image (`docker/redis-image.sh`), starting containers for a deployment
(`docker-compose.yml`, tests), or choosing targets (the experiment runner).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from chaos.docker_engine import open_engine
from chaos.errors import EngineUnreachable, FaultError
from chaos.faults.base import (
    DEFAULT_LENGTH,
    InjectedFault,
    NodeTarget,
    check_cores,
    check_length,
    whole_seconds,
)
from chaos.faults.docker_leftovers import (
    FaultIntent,
    PendingDockerFaults,
    cpu_loops_killer,
    reconnect,
    undo_on_engine,
)

log = logging.getLogger(__name__)

DOCKER_ACTIONS: frozenset[str] = frozenset(
    {"kill", "pause", "resume", "stop", "start", "blackhole", "cpu"}
)
EXITED_STATES = frozenset({"exited", "dead"})
# Network modes that have no network of the container's own to disconnect.
_SHARED_NETWORK_MODES = ("host", "none")


# Exit codes of a command the container cannot run (not found, not executable).
_NOT_RUNNABLE = frozenset({126, 127})


def cpu_launcher(cores: int | None, length: int, pidfile: str) -> str:
    """The sh script of the docker cpu fault: start `cores` busy loops (every core the container
    sees when None), each under `timeout LENGTH` so it ends by itself, in the background and
    off the exec's output (or the exec would wait for them); note their pids in `pidfile`;
    then exit 0 only if at least one still runs a moment later (`kill -0`), printing how many.
    POSIX sh only (no `seq`): a busybox image runs it too."""
    count = (
        str(cores)
        if cores is not None
        else ("$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo)")
    )
    return (
        f": > {pidfile}; i=0; "
        f"while [ $i -lt {count} ]; do "
        f"timeout {length} sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & "
        f"echo $! >> {pidfile}; i=$((i + 1)); "
        "done; sleep 0.2; running=0; "
        f"for pid in $(cat {pidfile}); do "
        "kill -0 $pid 2>/dev/null && running=$((running + 1)); "
        "done; "
        'echo "$running busy loop(s) running"; '
        '[ "$running" -gt 0 ] || { echo "no loop runs: is timeout in the image?" >&2; exit 1; }'
    )


def cpu_refusal(exit_code: int | None, output: str) -> str:
    """Why the cpu launcher failed, from its exit code and output."""
    if exit_code in _NOT_RUNNABLE or "executable file not found" in output:
        return (
            f"the image has no shell (sh) to run the loops (exit {exit_code}: {output}); the "
            "project's own Redis image (docker/redis-image.sh) has none: use the local or "
            "gremlin backend for a cpu fault on it"
        )
    return f"the launcher exited with {exit_code}: {output or 'no output'}"


def engine_unavailable_reason(base_url: str | None = None, timeout: float = 5.0) -> str | None:
    """None when a Docker engine answers a ping, else a one-line reason (for skips and logs)."""
    try:
        client = open_engine(timeout, base_url)
    except EngineUnreachable as error:
        return str(error)
    try:
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"Docker engine at {client.api.base_url} does not answer: {error}"
    finally:
        client.close()
    return None


class FaultCall(NamedTuple):
    """What an action's handler is given: the container, its target, what is being done (for
    messages), the step's params and the fault's intent (see `FaultIntent`)."""

    container: Container
    target: NodeTarget
    what: str
    params: dict[str, Any]
    intent: FaultIntent


class DockerFaultBackend:
    """Faults on containers of one Docker engine (see the module docstring for each action)."""

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        base_url: str | None = None,
        pending: PendingDockerFaults | None = None,
        stop_timeout: int = 10,
        api_timeout: float = 60.0,
        settle_timeout: float = 10.0,
    ) -> None:
        self._client = client
        self._base_url = base_url
        self._stop_timeout = stop_timeout
        self._api_timeout = api_timeout
        self._settle_timeout = settle_timeout
        self._client_lock = threading.Lock()
        self._pending = pending

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, created on first use (constructing the backend needs no engine)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = open_engine(self._api_timeout, self._base_url)
                except EngineUnreachable as error:
                    raise FaultError(f"docker backend: {error}") from error
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Turn every SDK/transport error into a FaultError that says what was being done."""
        try:
            yield
        except FaultError:
            raise
        except docker.errors.NotFound as error:
            raise FaultError(f"{what}: not found: {_explain(error)}") from error
        except docker.errors.APIError as error:
            raise FaultError(f"{what}: Docker engine refused: {_explain(error)}") from error
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise FaultError(f"{what}: Docker engine unreachable: {error}") from error

    def _container(self, target: NodeTarget) -> Container:
        if not target.container:
            raise FaultError(
                f"docker backend: target {target.name} has no container (set NodeTarget.container)"
            )
        with self._engine(f"docker backend: container {target.container!r} ({target.name})"):
            try:
                return self.client.containers.get(target.container)
            except docker.errors.NotFound as error:
                raise FaultError(
                    f"docker backend: container {target.container!r} of {target.name} does not "
                    "exist on this Docker engine"
                ) from error

    def _wait_status(self, container: Container, wanted: frozenset[str]) -> str:
        deadline = time.monotonic() + self._settle_timeout
        while True:
            container.reload()
            if container.status in wanted or time.monotonic() > deadline:
                return container.status
            time.sleep(0.05)

    # -- the FaultBackend interface ---------------------------------------------------------

    def supports(self, action: str) -> bool:
        return action in DOCKER_ACTIONS

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        if not self.supports(action):
            hint = " (use the local backend's TCP proxy)" if action == "latency" else ""
            raise FaultError(f"docker backend does not support {action!r}{hint}")
        container = self._container(target)
        what = f"docker {action} on {target.name} (container {container.name})"
        handler: Callable[[FaultCall], InjectedFault] = getattr(self, f"_{action}")
        seconds = params.get("seconds")
        intent = FaultIntent(self._pending, action, target, container, what,
                             None if seconds is None else float(seconds))  # fmt: skip
        try:
            with self._engine(what):
                fault = handler(FaultCall(container, target, what, params, intent))
        except Exception:
            # Not on an interrupt: the engine may still be applying it, so its entry stays for
            # the next run or halt, whose undo is harmless if it never took effect.
            intent.abandon(self.client)
            raise
        fault.details.setdefault("container", container.name)
        fault.details.setdefault("container_id", container.id)
        intent.applied(fault)
        if seconds is not None and fault.undo is not None:
            self._schedule_rollback(fault, float(seconds))
        return fault

    # -- actions ----------------------------------------------------------------------------

    def _fault(
        self,
        action: str,
        target: NodeTarget,
        details: dict[str, Any],
        undo: Callable[[], None] | None,
    ) -> InjectedFault:
        return InjectedFault(
            action=action, target=target, backend=self.name, details=details, undo=undo
        )

    def _kill(self, call: FaultCall) -> InjectedFault:
        container, target, what, params, intent = call
        signal = params.get("signal", "SIGKILL")
        if params.get("restart"):
            intent.write("start")
        container.kill(signal=signal)
        status = self._wait_status(container, EXITED_STATES) if signal == "SIGKILL" else None
        undo = self._undo(what, intent) if params.get("restart") else None
        return self._fault("kill", target, {"signal": signal, "status": status}, undo)

    def _pause(self, call: FaultCall) -> InjectedFault:
        container, target, what, _, intent = call
        intent.write("unpause")
        container.pause()
        return self._fault("pause", target, {}, self._undo(what, intent))

    def _resume(self, call: FaultCall) -> InjectedFault:
        container, target, _, _, _ = call
        container.reload()
        if container.status == "paused":
            container.unpause()
        return self._fault("resume", target, {}, None)

    def _stop(self, call: FaultCall) -> InjectedFault:
        container, target, what, params, intent = call
        timeout = int(params.get("timeout", self._stop_timeout))
        # Written down first: the stop itself takes up to `timeout` seconds.
        intent.write("start")
        container.stop(timeout=timeout)
        status = self._wait_status(container, EXITED_STATES)
        undo = self._undo(what, intent)
        return self._fault("stop", target, {"timeout": timeout, "status": status}, undo)

    def _start(self, call: FaultCall) -> InjectedFault:
        container, target, _, _, _ = call
        container.reload()
        if container.status != "running":
            container.start()
        return self._fault("start", target, {}, None)

    def _cpu(self, call: FaultCall) -> InjectedFault:
        container, target, what, params, intent = call
        cores = check_cores(params.get("cores"))
        raw_length = params.get("length", params.get("seconds", DEFAULT_LENGTH))
        length = whole_seconds(check_length(raw_length))
        pidfile = f"/tmp/rqchaos-cpu-{uuid.uuid4().hex[:12]}.pids"
        intent.write("kill_loops", pidfile=pidfile)
        # Synchronous, so its exit code says whether any loop runs (a detached exec has none).
        result = container.exec_run(["sh", "-c", cpu_launcher(cores, length, pidfile)])
        output = (result.output or b"").decode(errors="replace").strip()
        if result.exit_code != 0:
            reason = cpu_refusal(result.exit_code, output)
            raise FaultError(f"{what}: no busy loop runs in the container: {reason}")
        details = {"cores": cores or "all", "length": length, "pidfile": pidfile,
                   "launcher": output}  # fmt: skip
        container_id = container.id

        def undo() -> None:
            with self._engine(f"rollback of {what}"):
                running = self.client.containers.get(container_id)
                running.exec_run(["sh", "-c", cpu_loops_killer(pidfile)])

        return self._fault("cpu", target, details, undo)

    def _blackhole(self, call: FaultCall) -> InjectedFault:
        container, target, what, params, intent = call
        container.reload()
        mode = container.attrs.get("HostConfig", {}).get("NetworkMode") or "default"
        if mode in _SHARED_NETWORK_MODES or mode.startswith("container:"):
            raise FaultError(
                f"{what}: refused: the container uses network mode {mode!r}, so it has no "
                "network of its own to disconnect (with host networking it shares the host's "
                "stack). Use the local backend's blackhole (iptables rules on the node's "
                f"loopback address and port {target.port}) instead."
            )
        attached: dict[str, dict[str, Any]] = dict(
            container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        )
        wanted = params.get("network")
        note = None
        if wanted is None and target.peer_host and len(attached) > 1:
            # A node on a client and a peer network (staging): cut only its peer path, as the
            # local blackhole does, so clients still reach it.
            wanted = next(
                (name for name, s in attached.items() if s.get("IPAddress") == target.peer_host),
                None,
            )
            if wanted is None:
                note = (
                    f"no network of the container has its peer address {target.peer_host}: "
                    f"every network cut ({', '.join(sorted(attached))}), its clients' too"
                )
        elif wanted is None and target.peer_host:
            note = "the container is on one network only: its clients are cut off too"
        if wanted is not None:
            if wanted not in attached:
                raise FaultError(
                    f"{what}: container is not on network {wanted!r} (it is on "
                    f"{sorted(attached) or 'no network'})"
                )
            attached = {wanted: attached[wanted]}
        if not attached:
            raise FaultError(f"{what}: container is on no network; nothing to disconnect")
        intent.write("reconnect", networks=[(name, _endpoint(s)) for name, s in attached.items()])
        disconnected: list[tuple[str, dict[str, Any]]] = []
        try:
            for network_name, settings in attached.items():
                self.client.networks.get(network_name).disconnect(container, force=True)
                disconnected.append((network_name, settings))
        except Exception:
            # Leave nothing half-done: put back what was already cut, then report.
            reconnect(self.client, container.id, disconnected)
            raise
        details: dict[str, Any] = {
            "networks": {name: s.get("IPAddress") or None for name, s in disconnected},
        }
        if note is not None:
            details["note"] = note

        def undo() -> None:
            with self._engine(f"rollback of {what}"):
                details["reconnected"] = reconnect(self.client, container.id, disconnected)

        return self._fault("blackhole", target, details, undo)

    # -- rollbacks --------------------------------------------------------------------------

    def _undo(self, what: str, intent: FaultIntent) -> Callable[[], None]:
        """The rollback of a fault written down by `intent`: what a later run would do with its
        entry (`undo_on_engine`), so it brings back only what the fault changed."""
        entry = intent.entry
        assert entry is not None, "a fault's intent is written before it is applied"

        def undo() -> None:
            with self._engine(f"rollback of {what}"):
                undo_on_engine(self.client, entry)

        return undo

    def _schedule_rollback(self, fault: InjectedFault, seconds: float) -> None:
        def fire() -> None:
            try:
                fault.rollback()
            except FaultError as error:
                log.error("timed rollback failed: %s", error)

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.name = f"docker-rollback-{fault.target.name}"
        original = fault.undo
        assert original is not None

        def undo() -> None:
            if threading.current_thread() is not timer:
                timer.cancel()
            original()

        fault.undo = undo
        fault.details["rollback_after_s"] = seconds
        timer.start()


def _endpoint(settings: dict[str, Any]) -> dict[str, Any]:
    """What a reconnect needs of a network endpoint's settings (JSON-safe)."""
    return {key: settings.get(key) for key in ("Aliases", "Links", "IPAddress")}


def _explain(error: docker.errors.APIError | docker.errors.NotFound) -> str:
    explanation = getattr(error, "explanation", None)
    return str(explanation or error)
