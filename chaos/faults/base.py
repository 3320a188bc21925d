"""The one interface every fault backend implements (local signals and iptables, Docker, a
Gremlin-compatible API): inject a named action on a node, get back what was done and how to
undo it. Rollbacks always run: the runner calls `InjectedFault.rollback()` for every injected
fault, also after an error or Ctrl-C, and a rollback is safe to call twice.

Not for: choosing targets or judging results (the experiment runner does both).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from chaos.errors import FaultError
from common.nodes import CLIENT_HOST, RoleName

FaultAction = Literal["kill", "pause", "resume", "stop", "start", "blackhole", "latency", "cpu"]
FAULT_ACTIONS: tuple[str, ...] = FaultAction.__args__  # type: ignore[attr-defined]

# The cpu fault's bounds, the same on every backend (local, docker, gremlin, the agent).
# Seconds: Gremlin's default attack length, how long a fault that ends by itself (a cpu
# burst, an agent's attack) runs when nobody says.
DEFAULT_LENGTH = 60
CPU_MAX_LENGTH = 24 * 3600  # seconds: a burst longer than a day is a mistake, not a test
CPU_MAX_CORES = 256


def check_cores(cores: object) -> int | None:
    """The cpu fault's `cores` param: None (every core) or a whole number in
    1..CPU_MAX_CORES (not a bool, a float or a string); FaultError naming the field otherwise."""
    if cores is None:
        return None
    if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= CPU_MAX_CORES:
        raise FaultError(f"cpu: cores must be a whole number in 1..{CPU_MAX_CORES}, not {cores!r}")
    return cores


def check_length(length: object) -> float:
    """The cpu fault's `length` param in seconds: a number more than 0 and at most
    CPU_MAX_LENGTH (a day); FaultError naming the field otherwise."""
    if isinstance(length, bool) or not isinstance(length, int | float):
        raise FaultError(f"cpu: length must be a number of seconds, not {length!r}")
    if not 0 < length <= CPU_MAX_LENGTH:
        raise FaultError(
            f"cpu: length must be more than 0 s and at most {CPU_MAX_LENGTH} s, not {length!r}"
        )
    return float(length)


def whole_seconds(length: float) -> int:
    """A length for a tool that takes whole seconds (`timeout`, Gremlin's `-l`): rounded up,
    so a short burst is never truncated to 0 (which `timeout` reads as "no limit")."""
    return math.ceil(length)


class NodeAddress(BaseModel):
    """Which node, and where: `host`/`port` are where clients reach it, `peer_host` where
    replicas, sensors and controllers do (a blackhole cuts that path and leaves the client
    path), `pid` the process a local fault signals. The base of every file's node entry: each
    adds how its own tool reaches the node, and refuses any other field."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: RoleName
    shard: str | None = None
    host: str = CLIENT_HOST
    port: int = Field(gt=0, lt=65536)
    peer_host: str | None = None
    pid: int | None = None


class NodeTarget(NodeAddress):
    """A node as a fault backend reaches it: by pid (local), container (docker) or Gremlin
    target (gremlin)."""

    container: str | None = None
    gremlin: dict[str, Any] | None = None


@dataclass
class InjectedFault:
    action: str
    target: NodeTarget
    backend: str
    injected_at: float = field(default_factory=time.time)
    details: dict[str, Any] = field(default_factory=dict)
    undo: Callable[[], None] | None = None
    rolled_back_at: float | None = None
    rollback_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rollback(self) -> None:
        """Undo the fault (idempotent); a failure is recorded, then raised."""
        with self._lock:
            if self.rolled_back_at is not None or self.undo is None:
                return
            try:
                self.undo()
            except Exception as error:
                self.rollback_error = str(error)
                raise FaultError(
                    f"rollback of {self.action} on {self.target.name}: {error}"
                ) from error
            self.rolled_back_at = time.time()

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target.name,
            "role": self.target.role,
            "shard": self.target.shard,
            "backend": self.backend,
            "injected_at": self.injected_at,
            "rolled_back_at": self.rolled_back_at,
            "rollback_error": self.rollback_error,
            "details": self.details,
        }


class FaultBackend(Protocol):
    name: str

    def supports(self, action: str) -> bool: ...

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        """Apply `action` to `target` now. Params: `seconds` (pause/stop: undo after this long,
        optional), `latency_ms` (latency), `cores` and `length` (cpu). Raises FaultError."""
