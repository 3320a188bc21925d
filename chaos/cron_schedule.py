"""Cron expressions for `ratequeue-chaos run --cron`: the five standard fields (minute, hour,
day of month, month, day of week), read in UTC, checked field by field so a mistake is
refused naming the field, and the next time an expression names after a given time
(the `croniter` package).

Not for: keeping the schedule or counting missed slots (`schedule_grid`), or running anything.
"""

from __future__ import annotations

from croniter import CroniterBadDateError, CroniterError, croniter

FIELDS = ("minute", "hour", "day of month", "month", "day of week")
# croniter gives up looking for a next time after this many years (e.g. `0 0 30 2 *`).
NEVER = "names no time that ever comes (e.g. 30 February)"


class CronSchedule:
    """A valid five-field cron expression (UTC); raises ValueError naming the bad field."""

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != len(FIELDS):
            raise ValueError(
                f"{expression!r} has {len(fields)} field(s); a cron expression has 5: "
                f"{', '.join(FIELDS)} (e.g. '0 */4 * * *')"
            )
        for index, (name, text) in enumerate(zip(FIELDS, fields, strict=True)):
            alone = ["*"] * len(FIELDS)
            alone[index] = text
            if not croniter.is_valid(" ".join(alone)):
                raise ValueError(
                    f"field {index + 1} ({name}) {text!r} of {expression!r} is not valid"
                )
        if not croniter.is_valid(" ".join(fields)):
            raise ValueError(f"{expression!r} is not a valid cron expression")
        self.expression = " ".join(fields)
        try:
            self.next_after(0.0)
        except ValueError:
            raise ValueError(f"{expression!r} {NEVER}") from None

    def times_between(self, after: float, before: float, cap: int) -> int:
        """How many times the expression names strictly after `after` and before `before`,
        counted up to `cap` (one iterator walked forward, not a new one per time)."""
        times = croniter(self.expression, after)
        count = 0
        try:
            while count < cap and times.get_next(float) < before:
                count += 1
        except (CroniterBadDateError, CroniterError):
            pass  # no further time: the count is whole
        return count

    def next_after(self, moment: float) -> float:
        """The first time after `moment` (unix seconds) that the expression names."""
        try:
            return float(croniter(self.expression, moment).get_next(float))
        except (CroniterBadDateError, CroniterError) as error:
            raise ValueError(f"{self.expression!r}: {error}") from None
