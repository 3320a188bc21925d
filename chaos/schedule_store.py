"""A scheduled run's grid and next run time kept in the target deployment's control store
(Redis or etcd, `ChaosSchedules`), so a scheduler restarted on another host, or in a new
container without the old one's disk, keeps its times; named after the experiments it runs,
so two schedules on one deployment keep theirs apart.

Not for: the grid itself (`schedule_grid`), runs on the embedded testbed (its store lasts one
run: their schedule is kept in a file), or the run lock (`scheduler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chaos.errors import TargetError
from chaos.journal import Say
from chaos.targets import Deployment
from common.validation import without_passwords


def schedule_name(paths: Sequence[Path]) -> str:
    """The experiments' file names without their suffixes, sorted, joined by commas."""
    return ",".join(sorted({path.stem for path in paths}))


class StoreScheduleKeeper:
    """A `ScheduleKeeper` on `deployment`'s control store. The store not answering never stops
    the schedule: a read that fails starts a new grid and a write that fails is tried again
    at the next run, each said through `say`."""

    def __init__(self, deployment: Deployment, name: str, say: Say) -> None:
        self.deployment = deployment
        self.name = name
        self.say = say

    @property
    def where(self) -> str:
        store = self.deployment.etcd_endpoints or self.deployment.control
        return f"the control store {without_passwords(store)} (schedule {self.name!r})"

    def read(self) -> str | None:
        try:
            return self.deployment.on_store(lambda store: store.schedules.kept(self.name))
        except TargetError as error:
            self.say(f"the kept schedule cannot be read, a new one starts: {error}")
            return None

    def write(self, state_json: str) -> None:
        try:
            self.deployment.on_store(lambda store: store.schedules.keep(self.name, state_json))
        except TargetError as error:
            self.say(f"the schedule could not be kept (kept again after the next run): {error}")
