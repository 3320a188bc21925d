"""Every exception chaos raises, in one tree with one base:

    ChaosError
    ├── files and targets that cannot be used (ValueError; the message names the file and field)
    │   ├── ExperimentError           an experiment file
    │   │   └── NotApplicable         ... right, but not one the run's options can run
    │   │                             (skipped, not refused)
    │   └── TargetError               a deployment: its target file, or a part of it that cannot
    │                                 be reached or found
    ├── RefusedTarget                 the run is not allowed against this deployment (production
    │                                 without `--allow-prod`)
    ├── FaultError (RuntimeError)     a fault could not be injected or rolled back
    │   └── GremlinError              ... because the Gremlin API refused or failed (`status`)
    ├── TestbedError (RuntimeError)   the local testbed could not be started, found or stopped
    ├── EngineUnreachable             no Docker engine answers at the endpoint the message names
    ├── RunAborted                    a run stopped before its end (steady state not met, halted,
    │                                 interrupted); its journal says why
    ├── ScheduleNotRead               stop was asked for before the control store answered a
    │                                 scheduled run's kept schedule (nothing ran)
    └── AgentError (InvalidRequest)   the fault agent refuses a request (status, field at fault);
                                      answered in Gremlin's error shape (`agent.error_body`)

Not for: the verdict of a run (a failed hypothesis is a journal entry, not an exception).
"""

from __future__ import annotations

from common.errors import InvalidRequest
from common.http_contract import REASONS


class ChaosError(Exception):
    """Base class of every error chaos raises."""


class FaultError(ChaosError, RuntimeError):
    """A fault could not be injected (or rolled back); the message says which and why.
    `started_pid`: a process the fault started before it failed (a start whose port wait
    timed out), for whoever tracks the node."""

    started_pid: int | None = None


class EngineUnreachable(ChaosError):
    """No Docker engine answers at the endpoint the message names."""


class GremlinError(FaultError):
    """The Gremlin API refused or failed a request; `status` is the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TargetError(ChaosError, ValueError):
    """The deployment cannot be used: its target file is invalid (the message names the file and
    the field), or a part of it (the control store, a node) cannot be reached or found."""


class ExperimentError(ChaosError, ValueError):
    """An experiment file is invalid: the message names the file, the field and the problem."""


class NotApplicable(ExperimentError):
    """A valid experiment file the run's overrides cannot run (`--failover sentinel` over one
    that needs controllers or sensors): skipped with this reason, not refused."""


class TestbedError(ChaosError, RuntimeError):
    """The local testbed could not be started, found or stopped; the message says why."""

    __test__ = False  # not a test class, whatever pytest thinks of its name


class RunAborted(ChaosError):
    """The run stopped before its end (steady state not met, halted, or interrupted)."""


class RefusedTarget(ChaosError):
    """The run is not allowed against this deployment (e.g. production without --allow-prod)."""


class AgentError(ChaosError, InvalidRequest):
    """A request the agent refuses: HTTP status, the field at fault (if any), and why."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message, code=REASONS.get(status, "Error"), http_status=status)
        self.status = status
        self.field = field


class ScheduleNotRead(ChaosError):
    """Stop was asked for before the control store answered the kept schedule's read."""
