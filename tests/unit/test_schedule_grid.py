"""A schedule's fixed grid (`chaos.schedule_grid`): runs start at origin + k·every whatever
they last, an overrun skips the slots it covered and counts them, and a restarted scheduler
takes up the grid and the next run time kept on disk.

Not for: running experiments on it (tests/chaos/test_runner_and_cli.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from chaos.cron_schedule import CronSchedule
from chaos.run_watchers import RunWatcher
from chaos.schedule_grid import MAX_COUNTED_SLOTS, SCHEDULE_FILE, ScheduleGrid
from chaos.scheduler import wait_for_first_slot
from common.points_in_time import iso_utc

HOUR = 3600.0


def test_a_run_that_ends_within_its_slot_starts_the_next_on_the_grid(tmp_path: Path) -> None:
    grid = ScheduleGrid(tmp_path, 4 * HOUR, now=1000.0)
    slot = grid.advance(now=1000.0 + 25 * 60)  # the run took 25 minutes
    assert (slot.at, slot.skipped) == (1000.0 + 4 * HOUR, 0)


def test_starts_do_not_drift_by_the_runs_length(tmp_path: Path) -> None:
    grid = ScheduleGrid(tmp_path, HOUR, now=0.0)
    starts = [grid.advance(now=k * HOUR + 0.5 * HOUR).at for k in range(5)]
    assert starts == [(k + 1) * HOUR for k in range(5)]


def test_a_run_that_overran_skips_the_missed_slots_and_counts_them(tmp_path: Path) -> None:
    grid = ScheduleGrid(tmp_path, HOUR, now=0.0)
    grid.advance(now=0.2 * HOUR)  # next run planned at 1 h
    slot = grid.advance(now=3.5 * HOUR)  # that run lasted until 3.5 h
    assert (slot.at, slot.skipped) == (4 * HOUR, 2)  # the 2 h and 3 h slots


def test_the_next_run_is_kept_across_a_restart(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)
    restarted = ScheduleGrid(tmp_path, HOUR, now=0.5 * HOUR)
    assert restarted.resumed
    slot = restarted.catch_up(now=0.5 * HOUR)
    assert (slot.at, slot.skipped) == (HOUR, 0)
    assert restarted.advance(now=1.2 * HOUR).at == 2 * HOUR  # the old grid, not a new one


def test_a_restart_after_the_kept_time_runs_at_once_and_says_what_passed(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)  # next at 1 h
    restarted = ScheduleGrid(tmp_path, HOUR, now=3.5 * HOUR)
    slot = restarted.catch_up(now=3.5 * HOUR)
    assert (slot.at, slot.skipped) == (3.5 * HOUR, 2)


def test_a_new_period_starts_a_new_grid(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)
    changed = ScheduleGrid(tmp_path, 2 * HOUR, now=0.5 * HOUR)
    assert not changed.resumed and changed.next_run == 0.5 * HOUR


def test_an_unreadable_schedule_file_starts_a_new_grid(tmp_path: Path) -> None:
    (tmp_path / SCHEDULE_FILE).write_text("{not json")
    grid = ScheduleGrid(tmp_path, HOUR, now=10.0)
    assert not grid.resumed and grid.next_run == 10.0


def test_the_kept_file_says_the_next_run(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)
    kept = json.loads((tmp_path / SCHEDULE_FILE).read_text())
    assert kept == {"origin": 0.0, "every": HOUR, "next_run": HOUR}


def test_a_run_that_jitter_started_early_and_ended_before_its_slot_is_not_run_again(
    tmp_path: Path,
) -> None:
    grid = ScheduleGrid(tmp_path, HOUR, now=0.0)
    grid.advance(now=0.2 * HOUR)  # next run planned at 1 h; jitter started it at 0.9 h
    slot = grid.advance(now=0.95 * HOUR)  # and it ended before 1 h
    assert (slot.at, slot.skipped) == (2 * HOUR, 0)


def test_the_run_after_a_restart_does_not_count_the_stopped_time_again(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)  # next at 1 h
    restarted = ScheduleGrid(tmp_path, HOUR, now=3.5 * HOUR)
    restarted.catch_up(now=3.5 * HOUR)  # runs at once; 2 slots said to have passed
    slot = restarted.advance(now=3.7 * HOUR)  # that run ended within its slot
    assert (slot.at, slot.skipped) == (4 * HOUR, 0)


def test_a_run_after_a_restart_that_overran_counts_the_slots_it_covered(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, HOUR, now=0.0).advance(now=0.3 * HOUR)  # next at 1 h
    restarted = ScheduleGrid(tmp_path, HOUR, now=3.5 * HOUR)
    restarted.catch_up(now=3.5 * HOUR)
    slot = restarted.advance(now=5.2 * HOUR)
    assert (slot.at, slot.skipped) == (6 * HOUR, 2)  # the 4 h and 5 h slots


# -- cron schedules (`chaos run --cron`) ---------------------------------------------------------
EVERY_FOUR_HOURS = CronSchedule("0 */4 * * *")  # 00:00, 04:00, ... UTC
MIDNIGHT = 1_796_256_000.0  # 2026-12-03T00:00:00Z


def test_a_new_cron_schedule_first_runs_at_the_expressions_next_time(tmp_path: Path) -> None:
    grid = ScheduleGrid(tmp_path, None, now=MIDNIGHT + 60, cron=EVERY_FOUR_HOURS)
    assert grid.next_run == MIDNIGHT + 4 * HOUR and not grid.resumed


def test_a_cron_run_that_overran_skips_the_times_it_covered_and_counts_them(
    tmp_path: Path,
) -> None:
    grid = ScheduleGrid(tmp_path, None, now=MIDNIGHT - 60, cron=EVERY_FOUR_HOURS)
    slot = grid.advance(now=MIDNIGHT + 9 * HOUR)  # the 00:00 run lasted past 04:00 and 08:00
    assert (slot.at, slot.skipped) == (MIDNIGHT + 12 * HOUR, 2)


def test_a_restarted_cron_schedule_keeps_its_next_run_and_a_new_expression_does_not(
    tmp_path: Path,
) -> None:
    ScheduleGrid(tmp_path, None, now=MIDNIGHT + 60, cron=EVERY_FOUR_HOURS).save()
    again = ScheduleGrid(tmp_path, None, now=MIDNIGHT + HOUR, cron=EVERY_FOUR_HOURS)
    assert again.resumed and again.catch_up(MIDNIGHT + HOUR).at == MIDNIGHT + 4 * HOUR
    hourly = ScheduleGrid(tmp_path, None, now=MIDNIGHT + HOUR, cron=CronSchedule("0 * * * *"))
    assert not hourly.resumed and hourly.next_run == MIDNIGHT + 2 * HOUR


def test_a_cron_schedule_stopped_over_several_times_counts_them_missed(tmp_path: Path) -> None:
    ScheduleGrid(tmp_path, None, now=MIDNIGHT + 60, cron=EVERY_FOUR_HOURS).save()
    again = ScheduleGrid(tmp_path, None, now=MIDNIGHT + 13 * HOUR, cron=EVERY_FOUR_HOURS)
    slot = again.catch_up(MIDNIGHT + 13 * HOUR)  # 04:00 was due; 08:00 and 12:00 passed too
    assert (slot.at, slot.skipped) == (MIDNIGHT + 13 * HOUR, 2)


def test_a_cron_schedule_stopped_for_months_says_at_least_the_slots_it_counted(
    tmp_path: Path,
) -> None:
    every_minute = CronSchedule("* * * * *")
    ScheduleGrid(tmp_path, None, now=MIDNIGHT, cron=every_minute).save()
    eighty_days_on = MIDNIGHT + 80 * 24 * HOUR
    slot = ScheduleGrid(tmp_path, None, now=eighty_days_on, cron=every_minute).catch_up(
        eighty_days_on
    )
    assert (slot.skipped, slot.skipped_uncounted) == (MAX_COUNTED_SLOTS, True)
    assert slot.skipped_text() == f"at least {MAX_COUNTED_SLOTS}"


def test_missed_cron_slots_below_the_cap_are_counted_exactly(tmp_path: Path) -> None:
    every_minute = CronSchedule("* * * * *")
    ScheduleGrid(tmp_path, None, now=MIDNIGHT, cron=every_minute).save()  # next at 00:01
    slot = ScheduleGrid(tmp_path, None, now=MIDNIGHT + HOUR, cron=every_minute).catch_up(
        MIDNIGHT + HOUR + 30
    )
    assert (slot.skipped, slot.skipped_text()) == (59, "59")  # 00:02 ... 01:00


class NextRuns(RunWatcher):
    def __init__(self) -> None:
        self.times: list[float] = []

    def next_run(self, at: float) -> None:
        self.times.append(at)


def test_a_new_cron_schedule_says_its_first_run_in_utc_and_tells_its_watchers(
    tmp_path: Path,
) -> None:
    grid = ScheduleGrid(tmp_path, None, now=time.time(), cron=CronSchedule("0 0 1 1 *"))
    said: list[str] = []
    watcher = NextRuns()
    stopped = threading.Event()
    stopped.set()  # the wait for the first time returns at once
    wait_for_first_slot(grid, 0.0, random.Random(0), said.append, stopped, [watcher])
    assert watcher.times == [grid.next_run]
    assert said == [f"first run at {iso_utc(grid.next_run)} (0 0 1 1 *, UTC)"]
