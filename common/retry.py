"""The retry policy every part of the testbed retries by: at most `max_attempts` attempts in
all, and before attempt n + 1 a wait of `backoff * factor ** (n - 1)` seconds, at most
`max_backoff`. Workflow steps use it as it is (a step's `retry:` in YAML); the parts that need
more build on it: the queue client adds full jitter and a deadline
(`ratequeue.client.ClientRetryPolicy`), notifications a timeout per attempt
(`notifications.delivery.DeliveryPolicy`).

Not for: deciding what is worth retrying (each caller knows its own failures).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """Bounded attempts with exponential backoff, capped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(1, ge=1, le=100, description="attempts in all, the first included")
    backoff: float = Field(0.2, ge=0, le=600, description="seconds before the 2nd attempt")
    factor: float = Field(2.0, ge=1, le=10, description="each wait is this many times the last")
    # Left out of the stored form when unset, so records written with it read as before.
    max_backoff: float | None = Field(
        None, ge=0, le=3600, description="the longest wait", exclude_if=lambda cap: cap is None
    )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1 is the first)."""
        wait = self.backoff * self.factor ** max(0, attempt - 1)
        return wait if self.max_backoff is None else min(wait, self.max_backoff)
