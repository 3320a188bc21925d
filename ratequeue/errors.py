"""The exception hierarchy every part of ratequeue raises, and the HTTP status each maps to
(its bases are `common.errors`'s, which every service shares):

    CommonError
    └── ServiceError
        └── RatequeueError           500
            ├── InvalidInput         400  the request is wrong; retrying it cannot succeed
            │   ├── InvalidNumber    400
            │   └── MessageTooLarge  413  a body over the per-message limit; nothing written
            ├── QueueFull            429  nothing written
            ├── ShardFull            507  the shard is at its maxmemory; nothing written
            ├── IdConflict           409  the id names another message of that number
            ├── RetryableError       503  retry later with the same message id
            │   ├── DurabilityNotMet
            │   ├── ShardUnavailable
            │   ├── ShardScriptFailed  a shard's script failed on data it did not expect
            │   ├── StaleEpoch
            │   ├── EnqueueBacklogFull  the API holds its most enqueues for a shard
            │   └── TopologyUnavailable
            ├── EpochConflict        409  a topology compare-and-set lost: someone changed it first
            ├── ManagedBySentinel    409  a topology change where Redis Sentinel picks primaries
            └── NoSafeCandidate      409  no replica can be shown to hold every acknowledged write

Not for: formatting HTTP responses (the service does that from `code` and `http_status`).
"""

from __future__ import annotations

import copy

from common.errors import InvalidRequest, ServiceError


class RatequeueError(ServiceError):
    """Base class of the queue's refusals; `code` names it in API error bodies."""

    code = "ratequeue_error"


class InvalidInput(RatequeueError, InvalidRequest):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    code = "invalid_request"
    http_status = 400


class InvalidNumber(InvalidInput):
    code = "invalid_number"


class MessageTooLarge(InvalidInput):
    """A message body (as stored: compact JSON) is over the per-message limit."""

    code = "message_too_large"
    http_status = 413


class QueueFull(RatequeueError):
    """The number's queue already holds its maximum hours of sending; nothing was written."""

    code = "queue_full"
    http_status = 429


class ShardFull(RatequeueError):
    """The shard's primary is at its `maxmemory` and refuses writes (policy `noeviction`: no
    queued message is ever evicted to make room); nothing was written. Not retried within the
    request: room comes back only as consumers acknowledge messages."""

    code = "shard_full"
    http_status = 507
    retry_after_seconds = 5


class IdConflict(RatequeueError):
    """The message's id names another message (another body) to the same number, one still held
    or acknowledged within the dedup window; nothing was written. A retry of the same message is
    a duplicate, not this."""

    code = "id_conflict"
    http_status = 409


class RetryableError(RatequeueError):
    """The request may succeed if retried later with the same message id (the message may be
    queued already). `message_id`, set by `enqueue`: the id to retry with, made up for the
    message when the caller gave none."""

    http_status = 503
    retry_after_seconds = 1
    message_id: str | None = None


class DurabilityNotMet(RetryableError):
    """`WAIT` did not confirm enough replicas: the write is not acknowledged."""

    code = "durability_not_met"


class ShardUnavailable(RetryableError):
    """The shard's primary could not be reached (or is no longer the primary)."""

    code = "shard_unavailable"


class ShardScriptFailed(RetryableError):
    """A shard's script failed (e.g. on a stored value it did not expect); its writes before the
    failure stay, as Redis does not roll a script back. Retrying may succeed once a person fixes
    the value the error names."""

    code = "shard_script_failed"


class StaleEpoch(RetryableError):
    """The node's fence epoch differs from the topology the client routed by."""

    code = "stale_topology"


class EnqueueBacklogFull(RetryableError):
    """The API holds as many enqueues for the shard as it takes while its batches are on their
    way (e.g. mid-failover); nothing was written."""

    code = "enqueue_backlog_full"


class TopologyUnavailable(RetryableError):
    """No topology could be read from the control store."""

    code = "topology_unavailable"


class EpochConflict(RatequeueError):
    """Someone else changed the topology first (a compare-and-set on its epoch lost)."""

    code = "epoch_conflict"
    http_status = 409

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"topology epoch is {found}, expected {expected}")
        self.expected = expected
        self.found = found


class ManagedBySentinel(RatequeueError):
    """A change to a map whose primaries Redis Sentinel chooses (no one else writes it)."""

    code = "managed_by_sentinel"
    http_status = 409


class NoSafeCandidate(RatequeueError):
    """No replica can be shown to hold every acknowledged write: promote none, escalate."""

    code = "no_safe_candidate"
    http_status = 409


# What a script call answers one message of it, nothing of that message written (the others of
# the call go on). After any other error the message may be queued already.
MESSAGE_REFUSALS = (QueueFull, IdConflict, InvalidInput)


def own_instance(error: Exception) -> Exception:
    """A fresh copy of `error` (same class, text and attributes, no traceback); `error` itself
    when its class cannot be rebuilt from its text."""
    try:
        return copy.copy(error)
    except TypeError:
        return error
