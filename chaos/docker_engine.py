"""Connecting to the Docker engine the chaos commands use (`DOCKER_HOST`, else the default
socket), and saying in one line which endpoint did not answer when none does: docker-py's own
error ("Error while fetching server API version: ('Connection aborted.', ...)") names neither
the endpoint nor that the engine is not running.

Not for: what is done on the engine (see `faults.docker`, `soak`).
"""

from __future__ import annotations

import os

import docker
import docker.errors

from chaos.errors import EngineUnreachable

# Where docker-py (and the docker CLI) look when DOCKER_HOST is unset.
DEFAULT_SOCKET = "unix:///var/run/docker.sock"

# docker-py words a connection failure as a repr of nested exceptions; what a person reads.
_CAUSES = (
    ("ConnectionRefusedError", "connection refused"),
    ("Connection refused", "connection refused"),
    ("FileNotFoundError", "no such socket"),
    ("No such file or directory", "no such socket"),
    ("PermissionError", "permission denied"),
    ("Permission denied", "permission denied"),
    ("timed out", "timed out"),
)


def engine_endpoint(base_url: str | None = None) -> str:
    """The endpoint a client of `base_url` (None: the environment's) connects to, and whence."""
    if base_url:
        return base_url
    if os.environ.get("DOCKER_HOST"):
        return f"{os.environ['DOCKER_HOST']} (DOCKER_HOST)"
    return f"{DEFAULT_SOCKET} (the default socket; DOCKER_HOST is not set)"


def unreachable(error: Exception, base_url: str | None = None) -> EngineUnreachable:
    """The one-line error for a client that could not reach its engine with `error`."""
    text = str(error)
    cause = next((said for marker, said in _CAUSES if marker in text), text[:200])
    return EngineUnreachable(
        f"no Docker engine answers at {engine_endpoint(base_url)}: it is not running or not "
        f"reachable there ({cause})"
    )


def open_engine(timeout: float, base_url: str | None = None) -> docker.DockerClient:
    """A client of the engine at `base_url`, else the environment's; EngineUnreachable naming
    the endpoint when it does not answer (the client asks the engine its API version at once)."""
    try:
        if base_url:
            return docker.DockerClient(base_url=base_url, timeout=int(timeout))
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as error:
        raise unreachable(error, base_url) from error
