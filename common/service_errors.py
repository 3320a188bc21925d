"""The refusals every HTTP service of the project raises, and the status each is answered with
(`common.http_contract` turns one into the service's error envelope):

    ServiceError              500  a stable `code`, a `message`, optionally the `field` at fault
    │                              and `retry_after_seconds` (answered as `Retry-After`)
    └── InvalidRequest        400  the request is wrong; retrying it unchanged cannot succeed

Each service builds its own tree on these (`ratequeue.errors.RatequeueError`, the controllers'
`ApiError`, the agent's `AgentError`). Not for: formatting responses (`http_contract` does) or
errors that never reach a client.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class. `code` is the stable machine-readable name used in API error bodies."""

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
