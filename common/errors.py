"""Every exception the shared helpers raise, in one tree with one base (the packages above build
their own trees on these):

    CommonError
    ├── InputError (ValueError)     something a person wrote cannot be used; the message names
    │   │                           where and what was expected
    │   ├── InputFileError          a file (rules, workflows, experiments, targets, settings)
    │   ├── InvalidSetting          a service's setting (a flag or environment variable)
    │   └── JsonProblem             text that is not strict JSON (`line L, column C: what`)
    │       └── JsonTooDeep         ... because it nests deeper than the limit
    ├── RedisStartError (RuntimeError)
    │                               a `redis-server` did not start (the message has its log)
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
