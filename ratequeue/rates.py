"""Sending rates: the default per number type, and the per-number override.

A rate is segments per second plus a burst (segments that may leave back to back). The Lua
scripts enforce it with GCRA; this module only says what the rate is.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ratequeue.numbers import NumberType

# The allowed range of a rate. The floor keeps every GCRA time the scripts compute (interval,
# tolerance, the theoretical arrival time's expiry) a finite number of milliseconds that Redis
# accepts, and a queue's capacity (10 hours of sending) at least one segment.
MIN_PER_SECOND = 0.001
MAX_PER_SECOND = 100_000
MAX_BURST = 1_000_000


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: float = Field(
        ge=MIN_PER_SECOND, le=MAX_PER_SECOND, description="segments per second"
    )
    burst: int = Field(ge=1, le=MAX_BURST, description="segments that may be sent back to back")

    def encode(self) -> str:
        """The `per_second:burst` form the Lua scripts store and read."""
        return f"{self.per_second!r}:{self.burst}"

    @classmethod
    def decode(cls, raw: str | bytes) -> Rate:
        text = raw.decode() if isinstance(raw, bytes) else raw
        per_second, burst = text.split(":")
        return cls(per_second=float(per_second), burst=int(burst))


DEFAULT_RATES: dict[NumberType, Rate] = {
    NumberType.LONG_CODE: Rate(per_second=1, burst=1),
    NumberType.TOLL_FREE: Rate(per_second=3, burst=3),
    NumberType.SHORT_CODE: Rate(per_second=100, burst=100),
}

# A number's queue holds at most this much of its own sending (10 hours)...
DEFAULT_MAX_QUEUE_SECONDS = 36_000
# ... and at most this many segments, whatever its rate, so one number cannot take a shard's
# memory (with messages of at most `DEFAULT_MAX_MESSAGE_BYTES` each).
DEFAULT_MAX_NUMBER_SEGMENTS = 1_000_000
# The largest message body, as stored (compact JSON).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
