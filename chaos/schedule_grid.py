"""When a scheduled `ratequeue-chaos run --every` starts its runs: on a fixed grid from the first
start (start, start + every, start + 2·every, ...), so runs do not drift by their own length, or,
with `--cron`, at the times a cron expression names (`cron_schedule`); a run
that overran its slot skips the slots it missed (and says how many) instead of running them
back to back; and the grid and the next run time are kept, so a restarted scheduler keeps its
times: in the target deployment's control store (`schedule_store`), or, for runs on the
embedded testbed (whose store lasts one run), in a file beside the journals (`ScheduleFile`).

Not for: running anything, jitter, or the run lock (`scheduler`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ValidationError

from chaos.cron_schedule import CronSchedule

SCHEDULE_FILE = "chaos-schedule.json"


class ScheduleState(BaseModel):
    """The grid a schedule keeps: its origin and period (unix seconds) or its cron expression,
    and the next slot."""

    origin: float
    every: float | None = None
    cron: str | None = None
    next_run: float


class Slot(BaseModel):
    """The next start on the grid, and how many slots before it were missed (at least that
    many when `skipped_uncounted`: counting stopped at MAX_COUNTED_SLOTS)."""

    at: float
    skipped: int
    skipped_uncounted: bool = False

    def skipped_text(self) -> str:
        """`3`, or `at least 10000` when the count was cut short."""
        return f"at least {self.skipped}" if self.skipped_uncounted else str(self.skipped)


# How many cron slots are counted as missed at most: a `* * * * *` schedule stopped for months
# says "at least" this many instead of walking every minute of the gap.
MAX_COUNTED_SLOTS = 10_000


class ScheduleKeeper(Protocol):
    """Where a schedule's state is kept between runs of the scheduler."""

    @property
    def where(self) -> str:
        """Where that is, as a person would look for it."""
        ...

    def read(self) -> str | None:
        """The state as last kept, or None when none is kept (a keeper whose store may not
        answer waits for it, or raises: None would start a new grid and move the kept times)."""
        ...

    def write(self, state_json: str) -> None:
        """Keep the state, replacing what was kept."""
        ...


class ScheduleFile:
    """A schedule kept in `directory/chaos-schedule.json`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SCHEDULE_FILE

    @property
    def where(self) -> str:
        return str(self.path)

    def read(self) -> str | None:
        try:
            return self.path.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def write(self, state_json: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary file renamed over the old one: a crash never leaves half a file.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".schedule-")
        with os.fdopen(fd, "w") as handle:
            handle.write(state_json)
        os.replace(temporary, self.path)


class ScheduleGrid:
    """A schedule's fixed grid (a period, or a cron expression's times), kept by `keeper` (a
    directory: in its `chaos-schedule.json`)."""

    def __init__(
        self,
        keeper: ScheduleKeeper | Path,
        every: float | None,
        now: float,
        cron: CronSchedule | None = None,
    ) -> None:
        if (every is None) == (cron is None):
            raise ValueError("a schedule has either a period or a cron expression")
        if every is not None and not every > 0:
            raise ValueError(f"every must be more than 0 seconds, not {every}")
        self.keeper = ScheduleFile(keeper) if isinstance(keeper, Path) else keeper
        self.every = every
        self.cron = cron
        self.resumed = False
        kept = self._read()
        if kept is not None and self._same_cadence(kept):
            self.state = kept
            self.resumed = True
        elif cron is not None:
            # A cron schedule's first run is the expression's next time, as cron's is.
            self.state = ScheduleState(origin=now, cron=cron.expression,
                                       next_run=cron.next_after(now))  # fmt: skip
        else:
            # A new schedule, or a new period: the grid starts now.
            self.state = ScheduleState(origin=now, every=every, next_run=now)

    def _same_cadence(self, kept: ScheduleState) -> bool:
        if self.cron is not None:
            return kept.cron == self.cron.expression
        return kept.every is not None and math.isclose(kept.every, self.every or 0)

    def _cron_slots_between(self, after: float, before: float) -> tuple[int, bool]:
        """Cron times strictly after `after` and strictly before `before`, and whether there
        may be more than counted (the count reached MAX_COUNTED_SLOTS)."""
        assert self.cron is not None
        count = self.cron.times_between(after, before, MAX_COUNTED_SLOTS)
        return count, count >= MAX_COUNTED_SLOTS

    def _read(self) -> ScheduleState | None:
        kept = self.keeper.read()
        if kept is None:
            return None
        try:
            return ScheduleState.model_validate_json(kept)
        except ValidationError:
            return None  # not ours to trust: a fresh grid

    @property
    def next_run(self) -> float:
        return self.state.next_run

    def advance(self, now: float) -> Slot:
        """Move to the first slot after `now` and keep it; says how many slots after the
        planned one were passed over (0 when the run ended within its slot)."""
        # The slot the run was planned for (a restart's catch-up run is off the grid: the slot
        # before it); the next is after it even when jitter started the run early and it
        # ended before its planned time, so no slot runs twice.
        if self.cron is not None:
            at = self.cron.next_after(max(now, self.state.next_run))
            skipped, uncounted = self._cron_slots_between(self.state.next_run, at)
            self.state = self.state.model_copy(update={"next_run": at})
            self.save()
            return Slot(at=at, skipped=skipped, skipped_uncounted=uncounted)
        every = self.every
        assert every is not None
        planned = self._slot_index(self.state.next_run)
        index = max(planned + 1, math.floor((now - self.state.origin) / every) + 1)
        at = self.state.origin + index * every
        skipped = index - planned - 1
        self.state = self.state.model_copy(update={"next_run": at})
        self.save()
        return Slot(at=at, skipped=skipped)

    def catch_up(self, now: float) -> Slot:
        """On a restart: the kept next run if it is still ahead, else now (and how many slots
        passed while no scheduler ran)."""
        planned = self.state.next_run
        if planned >= now:
            return Slot(at=planned, skipped=0)
        uncounted = False
        if self.cron is not None:
            missed, uncounted = self._cron_slots_between(planned, now + 1e-6)
        else:
            missed = math.floor((now - planned) / (self.every or 1))
        # The run now stands in for the missed slots: `advance` counts from it, not from the
        # old planned time (which would say the stopped time again as an overrun).
        self.state = self.state.model_copy(update={"next_run": now})
        return Slot(at=now, skipped=missed, skipped_uncounted=uncounted)

    def _slot_index(self, at: float) -> int:
        """The grid slot at or before `at` (a slot's own time counts as that slot, whatever
        the float rounding of origin + k·every)."""
        return math.floor((at - self.state.origin) / (self.every or 1) + 1e-9)

    def save(self) -> None:
        """Keep the grid and the next run."""
        self.keeper.write(self.state.model_dump_json(exclude_none=True))
