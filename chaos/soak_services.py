"""The soak's service kills (`ratequeue-chaos soak --kill-services api,controller`): SIGKILL the
main process of staging's API container or of one controller container in the middle of a
cycle, then wait for the engine's restart policy to bring it back, answering `/healthz` on its
published port, within a bound.

The kill is sent from this host to the container's init process (its pid as the engine reports
it), as an OOM kill or a crash would end it. Not `docker kill`: the engine records that as an
operator's stop, and `restart: unless-stopped` then rightly leaves the container down, so it
would test nothing. The soak therefore needs the engine on this host (it reaches the nodes'
bridge addresses directly already) and the right to signal its processes (root).

Not for: faults on Redis nodes (`chaos.faults.docker`, through the experiment's method) or
judging a cycle's other checks (`chaos.soak`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors
import httpx
from docker.models.containers import Container

from chaos.errors import ChaosError
from lazarus_lite.docker_actuator import LABEL_DEPLOYMENT, LABEL_NAME

# What `--kill-services` accepts -> the `ratequeue.name` labels of its containers (a controller
# cycle takes the next of the three in turn).
SERVICE_CONTAINERS: dict[str, tuple[str, ...]] = {
    "api": ("api",),
    "controller": ("lazarus1", "lazarus2", "lazarus3"),
}
# After the cycle's node fault is in: the service dies while the failover (or the replica's
# absence) is being handled and the load still runs.
KILL_AFTER_FAULT_SECONDS = 0.5


def parse_services(value: str) -> list[str]:
    """`api,controller` -> ["api", "controller"]; ValueError naming what is accepted."""
    services = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [s for s in services if s not in SERVICE_CONTAINERS]
    if unknown or not services:
        raise ValueError(
            f"{', '.join(unknown) or 'nothing'}: expected a comma-separated list of "
            f"{', '.join(SERVICE_CONTAINERS)}"
        )
    return services


def service_of_cycle(cycle: int, services: list[str]) -> str | None:
    """The container name (label) whose service cycle `cycle` kills, None without services:
    the services in turn, and each controller in turn among the controller cycles."""
    if not services:
        return None
    index = cycle - 1
    service = services[index % len(services)]
    names = SERVICE_CONTAINERS[service]
    return names[(index // len(services)) % len(names)]


@dataclass
class ServiceKill:
    """One kill of a service's container and its way back (`back_seconds` None: not back)."""

    name: str
    health_url: str
    killed_at: float | None = None
    restarts_before: int = 0
    back_seconds: float | None = None
    error: str = ""

    @property
    def summary(self) -> str:
        if self.error:
            return f"{self.name}: {self.error}"
        if self.back_seconds is None:
            return f"{self.name}: not back"
        return f"{self.name} back {self.back_seconds:.1f} s"


class ServiceKiller:
    """Kills a deployment's service container by its name label, and waits for it back."""

    def __init__(self, engine: docker.DockerClient, deployment: str) -> None:
        self.engine = engine
        self.deployment = deployment
        self._timer: threading.Timer | None = None

    def kill_after_fault(
        self, kill: ServiceKill, within: float, stop: threading.Event
    ) -> Callable[[bool], None]:
        """An `ExperimentRunner` `on_fault` callback: the first fault injected sets off the kill
        `KILL_AFTER_FAULT_SECONDS` later and then the wait for the service back (at most
        `within` seconds), on a thread of its own: the run goes on meanwhile, and the time back
        is the service's, not the run's."""

        def kill_and_wait() -> None:
            try:
                self.kill(kill)
            except (ChaosError, docker.errors.DockerException, OSError) as error:
                kill.error = f"not killed: {error}"
                return
            self.wait_back(kill, within, stop)

        def on_fault(active: bool) -> None:
            if active and self._timer is None:
                self._timer = threading.Timer(KILL_AFTER_FAULT_SECONDS, kill_and_wait)
                self._timer.daemon = True
                self._timer.start()

        return on_fault

    def finish(self, kill: ServiceKill) -> None:
        """After the run: wait for the kill and the wait for the service back to be over."""
        timer, self._timer = self._timer, None
        if timer is None:
            kill.error = "not killed: the run injected no fault"
            return
        timer.join()

    def _container(self, name: str) -> Container:
        found = self.engine.containers.list(
            all=True,
            filters={"label": [f"{LABEL_DEPLOYMENT}={self.deployment}", f"{LABEL_NAME}={name}"]},
        )
        if len(found) != 1:
            raise ChaosError(f"{len(found)} containers labelled {LABEL_NAME}={name}, expected 1")
        return found[0]

    def kill(self, kill: ServiceKill) -> None:
        """SIGKILL the container's init process (the whole container dies, as in a crash)."""
        container = self._container(kill.name)
        state = container.attrs["State"]
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            raise ChaosError(f"{kill.name} is not running ({state.get('Status')}): nothing to kill")
        kill.restarts_before = int(container.attrs.get("RestartCount", 0))
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as error:
            raise ChaosError(
                f"{kill.name}: cannot SIGKILL its process {pid} from this host ({error}): the "
                "service kills need the Docker engine on this host and root"
            ) from None
        kill.killed_at = time.monotonic()

    def wait_back(self, kill: ServiceKill, within: float, stop: threading.Event) -> None:
        """Until the container runs again after a restart by the engine (its restart count up)
        and its `/healthz` answers 200, or `within` seconds after the kill."""
        if kill.killed_at is None:
            return
        deadline = kill.killed_at + within
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                if self._restarted(kill) and _healthy(http, kill.health_url):
                    kill.back_seconds = time.monotonic() - kill.killed_at
                    return
                if time.monotonic() > deadline:
                    return
                stop.wait(0.5)

    def _restarted(self, kill: ServiceKill) -> bool:
        try:
            container = self._container(kill.name)
        except (ChaosError, docker.errors.DockerException):
            return False
        restarts = int(container.attrs.get("RestartCount", 0))
        return container.attrs["State"].get("Running", False) and restarts > kill.restarts_before


def _healthy(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False
