"""Every exception the controller raises, in one tree with one base:

    LazarusError
    ├── definitions that cannot be loaded (ValueError; the message names the file and the field)
    │   ├── RuleError               a rule file
    │   ├── ProfileError            a service file (a profile's parameters and overrides)
    │   └── WorkflowError           a workflow definition, its steps or their reads
    ├── what a workflow step raises to the engine
    │   ├── Escalate                a person must decide: no retry, the workflow escalates
    │   └── UndeclaredRead          the step read what it did not declare (a bug): no retry
    ├── WorkflowCancelled           the engine refused to start a workflow (kill switch, realm)
    ├── OwnershipLost               another node took the workflow over: stop, save nothing
    ├── LockBusy                    someone else holds the resource lock
    ├── LockLost                    the lock is no longer held with this token: do not act
    ├── DecisionPending             an earlier report's decision outlasted the wait: the event
    │   │                           is published again, to be judged when handed out again
    │   └── WorkflowStartPending    another start of the same event holds its binding and has
    │                               not saved its workflow: published again, to adopt it then
    ├── EventIdReused               an event's id names another event already received: the
    │                               event is refused (REST 409; the stream dead-letters it)
    ├── ForensicsCopyFailed         a returning node's data could not be copied: it is held
    ├── ActuatorError               the actuator cannot change the fleet (engine unreachable,
    │                               a container it cannot create or start)
    ├── TopologyMissing             the store answers but holds no shard map (it restarted
    │                               empty): the shard watch watches nothing, and says so
    └── ApiError (InvalidRequest)   the REST API refuses a request (status, code, message;
                                    `common.http_contract` answers it)

Any other exception a step raises is a failed attempt, retried by the step's policy. Not for:
errors of the events (`detection.errors`) or of the queue (`ratequeue.errors`).
"""

from __future__ import annotations

from common.errors import InvalidRequest


class LazarusError(Exception):
    """Base class of every error the controller raises."""


class RuleError(LazarusError, ValueError):
    """A rule file is invalid; the message names the file, the rule and the field."""


class ProfileError(LazarusError, ValueError):
    """A service file is invalid: the message names the file and the field."""


class WorkflowError(LazarusError, ValueError):
    """A workflow definition is invalid; the message names the file, the step and the field."""


class UndeclaredRead(LazarusError):
    """A step read an output or inputs it did not declare at registration: the load-time check
    could not have vouched for it (a bug in the step, not in the workflow file)."""


class Escalate(LazarusError):
    """A step found that a person must decide: no retry, the workflow escalates."""


class WorkflowCancelled(LazarusError):
    """The engine refused to start a workflow (kill switch, control realm): the coordinator is
    told, marks the event NO_ACTION and escalates it."""


class OwnershipLost(LazarusError):
    """Another node took the workflow over (its lease lapsed): this node saves nothing more."""


class LockBusy(LazarusError):
    """Someone else holds the lock."""


class LockLost(LazarusError):
    """The lock is no longer held with this token: the holder must not act."""


class DecisionPending(LazarusError):
    """The decision of the event holding an incident's claim was not made within the wait: the
    later report is neither merged nor decided now: the consuming loop publishes it again and
    acknowledges this copy (by the time it comes round, that decision is made, or its own event
    is decided again)."""


class WorkflowStartPending(DecisionPending):
    """Another start of the same event (the event handled on two nodes at once) owns its
    binding: that start still holds its workflow's claim and has not saved the record within
    the wait, or it replaced this start's binding before this start's first save (then
    `WorkflowRecords.save` raises this, saving nothing). This start runs nothing and keeps no
    claim; the event is published again and, handed out again, adopts the event's one
    workflow (or, its starter gone without saving it, starts one)."""


class EventIdReused(LazarusError):
    """An event comes with the id of another event (different content) already in the audit
    trail; the message names the id. The same event again is no error (a retry, a redelivery)."""


class TopologyMissing(LazarusError):
    """The coordination store answers but holds no topology: nothing can be watched or failed
    over until the map is put back. A failed pass of the shard watch, so a node that stays so
    pages like one that cannot reach the store (`shard_watch.watch_forever`)."""


class ForensicsCopyFailed(LazarusError):
    """A returning former member's data files could not be copied for forensics: it is not
    rejoined (a full resync would replace the only copy of what it held)."""


class ActuatorError(LazarusError):
    """The actuator could not provision or remove a node; the message says which and why."""


class ApiError(LazarusError, InvalidRequest):
    """A refusal with its HTTP status and code (the error handlers answer it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code, http_status=status)
