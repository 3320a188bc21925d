"""A scheduled run's grid and next run time kept in the target deployment's control store
(Redis or etcd, `ChaosSchedules`), so a scheduler restarted on another host, or in a new
container without the old one's disk, keeps its times; each schedule under its own name (its
experiments' files and its period or cron expression), so two schedules on one deployment keep
theirs apart. A store that cannot be read is asked again until it answers: a schedule never
starts a new grid because of a read error (that would run at once and move the kept times).

Not for: the grid itself (`schedule_grid`), runs on the embedded testbed (its store lasts one
run: their schedule is kept in a file), or the run lock (`scheduler`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from chaos.cron_schedule import CronSchedule
from chaos.errors import ScheduleNotRead, TargetError
from chaos.journal import Say
from chaos.schedule_grid import ScheduleFile
from chaos.targets import Deployment
from common.validation import without_passwords

# A read the store did not answer is asked again after this long, doubled each time up to
# the longest: a store back within seconds is read at once, one down for long is not hammered.
FIRST_RETRY_SECONDS = 1.0
LONGEST_RETRY_SECONDS = 30.0


def schedule_name(
    paths: Sequence[Path], every: float | None, cron: CronSchedule | None = None
) -> str:
    """The experiments' file names without their suffixes (sorted, joined by commas, for people)
    and 12 hex digits of a SHA-256 of their absolute paths and the period or cron expression:
    `replica_kill-0123456789ab`. Files of one name in two directories, or one set of files on
    two cadences, are two schedules. The paths are made absolute and normalised (`..` taken
    out) but symlinks are not followed: a release deployed as `current -> releases/N` keeps its
    schedule's name across deploys."""
    stems = ",".join(sorted({path.stem for path in paths}))
    # float(): a period of 3600 and of 3600.0 is one cadence.
    cadence = f"cron {cron.expression}" if cron is not None else f"every {float(every or 0)!r}"
    absolute = sorted({os.path.normpath(path.absolute()) for path in paths})
    digest = hashlib.sha256("\n".join([*absolute, cadence]).encode()).hexdigest()
    return f"{stems}-{digest[:12]}"


class StoreScheduleKeeper:
    """A `ScheduleKeeper` on `deployment`'s control store. A read the store does not answer is
    tried again (said each time, waiting FIRST_RETRY_SECONDS, doubled up to
    LONGEST_RETRY_SECONDS) until it answers, or raises ScheduleNotRead once `stop` is set; a
    write that fails is said and tried again at the next run. With nothing kept in the store,
    the schedule a scheduler of an earlier version kept in `journal_dir`'s `chaos-schedule.json`
    is adopted (the grid keeps it if its cadence is the same), and once the store keeps the
    schedule that file is renamed `chaos-schedule.json.adopted`, so no later schedule adopts it
    again."""

    def __init__(
        self,
        deployment: Deployment,
        name: str,
        say: Say,
        stop: threading.Event,
        journal_dir: Path | None = None,
    ) -> None:
        self.deployment = deployment
        self.name = name
        self.say = say
        self.stop = stop
        self.earlier_file = None if journal_dir is None else ScheduleFile(journal_dir)
        # The grid origin of the earlier version's file this keeper read, if it read one: the
        # file is retired only once a kept state carries that origin (the grid resumed from it;
        # one of another cadence starts its own grid and leaves the file to its schedule).
        self.earlier_origin: float | None = None

    @property
    def where(self) -> str:
        store = self.deployment.etcd_endpoints or self.deployment.control
        return f"the control store {without_passwords(store)} (schedule {self.name!r})"

    def read(self) -> str | None:
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                kept = self.deployment.on_store(lambda store: store.schedules.kept(self.name))
            except TargetError as error:
                self.say(
                    f"the kept schedule cannot be read, asked again in {delay:g} s (no run "
                    f"until it is read: a new grid would move its times): {error}"
                )
                if self.stop.wait(timeout=delay):
                    raise ScheduleNotRead(f"stopped before {self.where} answered") from None
                delay = min(delay * 2, LONGEST_RETRY_SECONDS)
                continue
            if kept is None and self.earlier_file is not None:
                earlier = self.earlier_file.read()
                if earlier is not None:
                    self.say(
                        f"nothing kept in {self.where}: reading the schedule an earlier "
                        f"version kept in {self.earlier_file.where}"
                    )
                    self.earlier_origin = _origin(earlier)
                    return earlier
            return kept

    def write(self, state_json: str) -> None:
        try:
            self.deployment.on_store(lambda store: store.schedules.keep(self.name, state_json))
        except TargetError as error:
            self.say(f"the schedule could not be kept (kept again after the next run): {error}")
            return
        adopted = self.earlier_origin is not None and _origin(state_json) == self.earlier_origin
        if adopted and self.earlier_file is not None:
            self.earlier_origin = None
            retired = self.earlier_file.path.with_name(self.earlier_file.path.name + ".adopted")
            try:
                self.earlier_file.path.replace(retired)
            except OSError as error:
                self.say(f"{self.earlier_file.where} could not be renamed {retired.name}: {error}")
            else:
                self.say(f"{self.earlier_file.where} is in the store now: renamed {retired.name}")


def _origin(state_json: str) -> float | None:
    """A kept schedule's grid origin; None for a text that is not one (the grid refuses it)."""
    try:
        origin = json.loads(state_json).get("origin")
    except (ValueError, AttributeError):
        return None
    return float(origin) if isinstance(origin, int | float) else None
