"""Ratequeue: per-number rate-limited queues on horizontally sharded Redis.

The public surface is small: `RatequeueClient` / `AsyncRatequeueClient` for producers and
consumers, the error classes in `ratequeue.errors`, and the `ratequeue` CLI (`serve`).
"""

from ratequeue.client import AsyncRatequeueClient, RatequeueClient
from ratequeue.errors import (
    DurabilityNotMet,
    IdConflict,
    InvalidInput,
    QueueFull,
    RatequeueError,
    ShardScriptFailed,
    ShardUnavailable,
)

__all__ = [
    "AsyncRatequeueClient",
    "DurabilityNotMet",
    "IdConflict",
    "InvalidInput",
    "QueueFull",
    "RatequeueClient",
    "RatequeueError",
    "ShardScriptFailed",
    "ShardUnavailable",
]
