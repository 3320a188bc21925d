"""Chaos Toolkit actions (python provider, module `chaos.ctk.actions`): faults injected through
the same fault phase and backends `ratequeue-chaos run` uses (a selector picks the node from the
live topology; `backend` as in a YAML step), their rollbacks, and the background load a run
measures. Each returns a plain summary for the CTK journal. The deployment comes from the
experiment's `configuration` (`ratequeue_deployment`, see `chaos.ctk.session`).

Not for: measuring (see `chaos.ctk.probes`).
"""

from typing import Any

from chaos.ctk.session import Configuration, Session, guard_faults, session_for
from chaos.errors import ExperimentError
from chaos.experiments import FaultStep, LoadSettings
from chaos.faults.base import InjectedFault
from chaos.load import BackgroundLoad, LoadProfile
from common.validation import validated

# What CTK's discovery lists as this module's actions.
__all__ = [
    "blackhole",
    "inject",
    "kill",
    "pause",
    "remove_blackholes",
    "resume",
    "roll_back_all",
    "start_load",
]  # fmt: skip

# A fault step's field (as a YAML step names it) by the action argument a CTK experiment set it
# with: an error names what the person wrote.
ARGUMENT_OF_FIELD = {
    "duration": "seconds",
    "target.role": "role",
    "target.shard": "shard",
    "target.which": "which",
    "from_node.role": "from_role",
}


def start_load(
    enqueue_per_second: float = 40,
    numbers: int = 40,
    producers: int = 4,
    consumers: int = 2,
    drain_seconds: float = 30,
    configuration: Configuration = None,
) -> dict[str, Any]:
    """Producers and consumers through the API until a probe that needs the whole ledger
    (`acknowledged_lost`, `duplicates`, `rate_overshoot_seconds`) stops and drains them."""
    session = session_for(configuration)
    if session.load is not None:
        raise ExperimentError("start_load: a load is already running in this experiment")
    raw = {
        "enqueue_per_second": enqueue_per_second,
        "numbers": numbers,
        "producers": producers,
        "consumers": consumers,
        "drain_seconds": drain_seconds,
    }
    settings = validated(LoadSettings, raw, "start_load", error=ExperimentError, what="argument")
    profile = LoadProfile(**settings.model_dump(exclude={"duration", "drain_seconds"}))
    session.ledger = None
    session.load = BackgroundLoad(
        session.deployment.api, profile, drain_timeout=settings.drain_seconds
    ).start()
    return {"api": session.deployment.api, **profile.model_dump(include=set(raw))}


def kill(
    role: str = "primary",
    shard: str = "random",
    which: str = "first",
    backend: str | None = None,
    configuration: Configuration = None,
) -> list[dict[str, Any]]:
    """SIGKILL (or the backend's kill) of the selected node(s); nothing to roll back."""
    return _inject("kill", role, shard, which, backend, configuration)


def pause(
    role: str = "primary",
    shard: str = "random",
    which: str = "first",
    seconds: float | None = None,
    backend: str | None = None,
    configuration: Configuration = None,
) -> list[dict[str, Any]]:
    """Freeze the selected node(s) (SIGSTOP locally); `seconds`: resumed by itself after."""
    return _inject("pause", role, shard, which, backend, configuration, duration=seconds)


def blackhole(
    role: str = "primary",
    shard: str = "random",
    which: str = "first",
    seconds: float | None = None,
    from_role: str | None = None,
    backend: str | None = None,
    configuration: Configuration = None,
) -> list[dict[str, Any]]:
    """Cut the selected node's peer path (replicas, sensors, controllers); `from_role`: only
    the path from that node of the same shard (e.g. `sensor`)."""
    extra: dict[str, Any] = {"duration": seconds}
    if from_role is not None:
        extra["from_node"] = {"role": from_role, "shard": "same"}
    return _inject("blackhole", role, shard, which, backend, configuration, **extra)


def inject(
    action: str,
    role: str = "primary",
    shard: str = "random",
    which: str = "first",
    seconds: float | None = None,
    latency_ms: int | None = None,
    cores: int | None = None,
    backend: str | None = None,
    configuration: Configuration = None,
) -> list[dict[str, Any]]:
    """Any fault `ratequeue-chaos run` knows (kill, pause, resume, stop, start, blackhole, latency,
    cpu), with a YAML step's fields; `seconds` is the step's `duration`."""
    extra = {"duration": seconds, "latency_ms": latency_ms, "cores": cores}
    return _inject(action, role, shard, which, backend, configuration, **extra)


def resume(configuration: Configuration = None) -> list[dict[str, Any]]:
    """Rollback of `pause`: every node this experiment paused runs again."""
    return _roll_back(session_for(configuration), {"pause"})


def remove_blackholes(configuration: Configuration = None) -> list[dict[str, Any]]:
    """Rollback of `blackhole`: every path this experiment cut is open again."""
    return _roll_back(session_for(configuration), {"blackhole"})


def roll_back_all(configuration: Configuration = None) -> list[dict[str, Any]]:
    """Every fault this experiment injected undone (what `ratequeue-chaos run` does after each run),
    and the load stopped."""
    session = session_for(configuration)
    if session.load is not None:
        session.load.stop_producing()
    return _roll_back(session, None)


def _inject(
    action: str,
    role: str,
    shard: str,
    which: str,
    backend: str | None,
    configuration: Configuration,
    **fields: Any,
) -> list[dict[str, Any]]:
    raw = {"action": action, "target": {"role": role, "shard": shard, "which": which},
           "backend": backend, **{k: v for k, v in fields.items() if v is not None}}  # fmt: skip
    step = validated(FaultStep, raw, f"chaos.ctk.actions.{action}", error=ExperimentError,
                     what="argument", renamed=ARGUMENT_OF_FIELD)  # fmt: skip
    session = session_for(configuration)  # bad arguments are refused before anything is opened
    guard_faults()
    choice = session.shard_choice()
    target_shard = choice.shard_of(step.target)
    injected = session.faults.inject_step(step, target_shard, session.injected)
    for fault in injected:
        if fault.target.role in {"primary", "replica"}:
            session.faulted_shards.add(target_shard)
            if session.fault_at is None:
                session.fault_at = fault.injected_at
    return [_summary(f) for f in injected]


def _roll_back(session: Session, actions: set[str] | None) -> list[dict[str, Any]]:
    return [_summary(f) for f in session.roll_back(actions)]


def _summary(fault: InjectedFault) -> dict[str, Any]:
    """The fault as the journal records it, its details kept to plain values (CTK writes the
    output as JSON)."""
    summary = fault.summary()
    summary["details"] = {k: v for k, v in summary["details"].items()
                          if isinstance(v, str | int | float | bool | None)}  # fmt: skip
    return summary
