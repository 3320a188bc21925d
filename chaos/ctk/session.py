"""What one `chaostoolkit run` holds between its activities: the deployment its configuration
names, the shard the run acts on, the faults injected (so a rollback can undo them), the
background load and its ledger. Chaos Toolkit calls every activity of an experiment in one
process, so this state lives in the module, one session per deployment file.

Not for: the faults' mechanics (the runner's `FaultPhase` and the fault backends) or judging
(CTK tolerances judge what the probes return).
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos.controller_answers import ControllerAnswers
from chaos.errors import FaultError, TargetError
from chaos.fault_phase import FaultPhase
from chaos.faults.base import InjectedFault
from chaos.ledger import Ledger
from chaos.load import BackgroundLoad
from chaos.steady_state import SteadyStateProbes
from chaos.targets import Deployment, ShardChoice, load_deployment
from chaos.testbed import STATE_FILE
from ratequeue.topology import Topology

# The CTK configuration key that names the deployment: a testbed directory, its testbed.json,
# or a target file (`ratequeue-chaos run --target`).
DEPLOYMENT_KEY = "ratequeue_deployment"

# The CTK configuration key that names where Docker faults are written down while in force (as
# `ratequeue-chaos run --journal-dir`), so a `ratequeue-chaos run` or `halt` there undoes what a
# killed CTK run left; and its default, the CLI's.
JOURNAL_DIR_KEY = "ratequeue_journal_dir"
DEFAULT_JOURNAL_DIR = Path("chaos-journals")

# What CTK passes a python provider that takes `configuration`.
Configuration = dict[str, Any] | None


@dataclass
class Session:
    deployment: Deployment
    faults: FaultPhase
    probes: SteadyStateProbes
    http: httpx.Client
    rng: random.Random
    choice: ShardChoice | None = None
    topology_before: Topology | None = None
    injected: list[InjectedFault] = field(default_factory=list)
    load: BackgroundLoad | None = None
    ledger: Ledger | None = None
    fault_at: float | None = None
    faulted_shards: set[str] = field(default_factory=set)

    def shard_choice(self) -> ShardChoice:
        """The run's shard, picked once (`random`), and the other one (`other`)."""
        if self.choice is None:
            self.choice = ShardChoice([s.id for s in self.first_topology().shards], self.rng)
        return self.choice

    def roll_back(self, actions: set[str] | None) -> list[InjectedFault]:
        """Undo the session's faults of `actions` (None: all), newest first; every one is
        tried, then the first failure is raised (CTK records the rollback as failed)."""
        chosen = [f for f in self.injected if actions is None or f.action in actions]
        errors: list[FaultError] = []
        for fault in reversed(chosen):
            try:
                fault.rollback()
            except FaultError as error:
                errors.append(error)
        if errors:
            raise errors[0]
        return chosen

    def first_topology(self) -> Topology:
        """The shard map as the run first saw it (what `promoted_shards` compares with)."""
        if self.topology_before is None:
            self.topology_before = self.deployment.topology()
        return self.topology_before


_SESSIONS: dict[str, Session] = {}
_LOCK = threading.Lock()


def deployment_path(configuration: Configuration) -> Path:
    """The deployment file the experiment's configuration names; TargetError naming the key."""
    value = (configuration or {}).get(DEPLOYMENT_KEY)
    if not isinstance(value, str) or not value:
        raise TargetError(
            f"configuration {DEPLOYMENT_KEY}: expected the path of a testbed directory, its "
            f"{STATE_FILE} or a target file, not {value!r}"
        )
    path = Path(value)
    return path / STATE_FILE if path.is_dir() else path


def session_for(configuration: Configuration) -> Session:
    """The session of the deployment in `configuration`, opened on first use."""
    path = deployment_path(configuration)
    with _LOCK:
        found = _SESSIONS.get(str(path))
        if found is None:
            if not path.exists():
                raise TargetError(f"configuration {DEPLOYMENT_KEY}: {path} does not exist")
            found = _SESSIONS[str(path)] = _open(load_deployment(path), journal_dir(configuration))
        return found


def journal_dir(configuration: Configuration) -> Path:
    """Where the session's Docker faults are written down; TargetError naming the key."""
    value = (configuration or {}).get(JOURNAL_DIR_KEY, str(DEFAULT_JOURNAL_DIR))
    if not isinstance(value, str) or not value:
        raise TargetError(
            f"configuration {JOURNAL_DIR_KEY}: expected the path of a journal directory, "
            f"not {value!r}"
        )
    return Path(value)


def _open(deployment: Deployment, journals: Path) -> Session:
    http = httpx.Client(timeout=5)
    stop = threading.Event()
    rng = random.Random()

    def say(message: str) -> None:
        # CTK's own log shows what each activity returned; the narration is detail.
        logging.getLogger("chaostoolkit").debug(message)

    controllers = ControllerAnswers(deployment, http, say)
    return Session(
        deployment=deployment,
        faults=FaultPhase(
            deployment, controllers, rng=rng, stop=stop, say=say, journal_dir=journals
        ),
        probes=SteadyStateProbes(deployment, http, stop, say),
        http=http,
        rng=rng,
    )


def guard_faults() -> None:
    """Before the first fault of the process: an exit hook that undoes every session's faults
    and stops its load. CTK's default rollback strategy skips the experiment's rollbacks when
    the run failed (a probe raised, which ours do on purpose) or was interrupted (Ctrl-C,
    SIGTERM, SIGUSR2), which would leave a primary frozen or a path cut after CTK exits."""
    global _GUARDED
    with _LOCK:
        if not _GUARDED:
            atexit.register(_roll_back_at_exit)
            _GUARDED = True


_GUARDED = False


def _roll_back_at_exit() -> None:
    log = logging.getLogger("chaostoolkit")
    with _LOCK:
        sessions = list(_SESSIONS.values())
    for session in sessions:
        if session.load is not None:
            session.load.stop_producing()
        left = [f for f in session.injected if f.undo is not None and f.rolled_back_at is None]
        if not left:
            continue
        log.warning("rolling back %d fault(s) the experiment left in place", len(left))
        try:
            session.roll_back(None)
        except FaultError as error:
            log.error("rollback at exit: %s", error)


def forget_sessions() -> None:
    """Drop every session (its HTTP client closed); the next activity opens a new one."""
    with _LOCK:
        for session in _SESSIONS.values():
            if session.load is not None:
                session.load.stop_producing()
            session.http.close()
        _SESSIONS.clear()
