"""Every exception the shared helpers raise, in one tree with one base (the packages above build
their own trees on these):

    CommonError
    ├── InputError (ValueError)     something a person wrote cannot be used; the message names
    │   │                           where and what was expected
    │   ├── InputFileError          a file (rules, workflows, experiments, targets, settings)
    │   ├── InvalidSetting          a service's setting (a flag or environment variable)
    │   ├── SettingProblem          a settings model's check across fields, blaming one field
    │   └── JsonProblem             text that is not strict JSON (`line L, column C: what`)
    │       └── JsonTooDeep         ... because it nests deeper than the limit
    ├── RedisStartError (RuntimeError)
    │                               a `redis-server` did not start (the message has its log)
    ├── EtcdStartError (RuntimeError)
    │                               an etcd cluster did not start or elect a leader (with logs)
    ├── EtcdError                   the etcd client layer (`common.etcd_client`) refuses
    │   ├── EtcdUnreachable         no member answered within the call's timeout (dead, paused,
    │   │   │                       cut off, or no quorum); nothing is known to have changed
    │   │   └── EtcdOutcomeUnknown  a write was sent and no answer came: it may or may not
    │   │                           have been applied (read before writing again)
    │   ├── EtcdCompareFailed       a transaction's compare did not hold (lost a race)
    │   ├── EtcdLeaseNotFound       the lease expired or was revoked
    │   ├── EtcdHistoryCompacted    a watch cannot resume: the revisions it needs were compacted
    │   └── EtcdBadRequest (ValueError)
    │                               etcd refused the request itself; retrying cannot succeed
    └── ServiceError          500   an HTTP service refuses a request: a stable `code`, a
        │                           `message`, optionally the `field` at fault and
        │                           `retry_after_seconds` (answered as `Retry-After`)
        └── InvalidRequest    400   the request is wrong; retrying it unchanged cannot succeed

`common.http_contract` answers a ServiceError in the service's error envelope; each service
builds its refusals on it (`ratequeue.errors.RatequeueError`, `lazarus_lite.errors.ApiError`,
`chaos.errors.AgentError`). `common.bounded_yaml` raises `yaml.YAMLError`s inside the YAML
loader, which callers see as InputFileError. Not for: errors of one package (each has its own
`errors` module).
"""

from __future__ import annotations


class CommonError(Exception):
    """Base class of every error the shared helpers raise."""


class InputError(CommonError, ValueError):
    """Something a person wrote (a file, a setting, a request body) cannot be used."""


class InputFileError(InputError):
    """A file cannot be used; the message names it (for loaders without an error of their own)."""


class InvalidSetting(InputError):
    """A setting a service cannot start with; the message names each one and what was
    expected."""


class SettingProblem(InputError):
    """Raised by a settings model's check across fields, blaming one of them (`setting`), so
    the message names it and where its value came from like any other bad setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class JsonProblem(InputError):
    """The text is not JSON this parser takes; `str()` is `line L, column C: what` (as much of
    the place as is known)."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        where = ", ".join(
            f"{name} {value}" for name, value in (("line", line), ("column", column)) if value
        )
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem = problem
        self.line = line


class JsonTooDeep(JsonProblem):
    """The document nests deeper than the limit."""


class RedisStartError(CommonError, RuntimeError):
    """A `redis-server` process did not start or did not answer in time."""


class EtcdStartError(CommonError, RuntimeError):
    """An etcd cluster did not start, or did not elect a leader in time."""


class EtcdError(CommonError):
    """Base class of what the etcd client layer raises."""


class EtcdUnreachable(EtcdError):
    """No member of the cluster answered within the call's timeout: every endpoint was tried
    (dead, paused, cut off, or the members that answer have no leader). A caller that holds a
    lock or lease must assume it may lose it."""


class EtcdOutcomeUnknown(EtcdUnreachable):
    """A write reached a member and no answer came back in time: it may have been applied. It
    is never retried on another member behind the caller's back (that could apply it twice);
    read the key (or guard the next write with a compare) to learn what happened."""


class EtcdCompareFailed(EtcdError):
    """A transaction's compare did not hold, so its success operations were not applied. Carries
    the transaction's response (`response`) with the failure operations' results."""

    def __init__(self, message: str, response: object = None) -> None:
        super().__init__(message)
        self.response = response


class EtcdLeaseNotFound(EtcdError):
    """The lease named does not exist any more (it expired or was revoked): whatever it kept
    alive is gone."""


class EtcdHistoryCompacted(EtcdError):
    """A watch (or a read at a revision) needs revisions the store has compacted away: read the
    current state and watch again from its revision."""


class EtcdBadRequest(EtcdError, ValueError):
    """etcd refused the request itself (a malformed key, a too-large value, an unknown field);
    sending it again unchanged cannot succeed."""


class ServiceError(CommonError):
    """An HTTP service's refusal. `code` is the stable machine-readable name used in API error
    bodies."""

    code = "service_error"
    http_status = 500
    # When set, retrying later may succeed: the answer carries `Retry-After` with this value.
    retry_after_seconds: int | None = None
    field: str | None = None

    def __init__(
        self, message: str, *, code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


class InvalidRequest(ServiceError):
    """The request itself is wrong (its body, a parameter); retrying it unchanged cannot
    succeed."""

    code = "invalid_request"
    http_status = 400
