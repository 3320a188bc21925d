"""The exception hierarchy every part of ratequeue raises, and the HTTP status each maps to.

    RatequeueError                 500
    ├── InvalidInput               400  (the request is wrong; retrying it cannot succeed)
    │   └── InvalidNumber          400
    ├── QueueFull                  429  (nothing written)
    ├── IdConflict                 409  (the id names another message of that number)
    └── RetryableError             503  (retry later with the same message id)
        ├── DurabilityNotMet
        ├── ShardUnavailable
        ├── StaleEpoch
        └── TopologyUnavailable

Not for: formatting HTTP responses (the service does that from `code` and `http_status`).
"""

from __future__ import annotations


class RatequeueError(Exception):
    """Base class. `code` is the stable machine-readable name used in API error bodies."""

    code = "ratequeue_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RatequeueError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


class InvalidNumber(InvalidInput):
    code = "invalid_number"


class QueueFull(RatequeueError):
    """The number's queue already holds its maximum hours of sending; nothing was written."""

    code = "queue_full"
    http_status = 429


class IdConflict(RatequeueError):
    """The message's id was used for another message to the same number within the dedup window
    (another body); nothing was written. A retry of the same message is a duplicate, not this."""

    code = "id_conflict"
    http_status = 409


class RetryableError(RatequeueError):
    """The request may succeed if retried later with the same message id."""

    http_status = 503
    retry_after_seconds = 1


class DurabilityNotMet(RetryableError):
    """`WAIT` did not confirm enough replicas: the write is not acknowledged."""

    code = "durability_not_met"


class ShardUnavailable(RetryableError):
    """The shard's primary could not be reached (or is no longer the primary)."""

    code = "shard_unavailable"


class StaleEpoch(RetryableError):
    """The node's fence epoch differs from the topology the client routed by."""

    code = "stale_topology"


class TopologyUnavailable(RetryableError):
    """No topology could be read from the control store."""

    code = "topology_unavailable"
