"""What a schedule tells those who watch its runs: a run starts, a run ends with its journal, a
run could not run at all, a fault is injected or rolled back, the next run is due. The announcer
(`announcements`) and the scheduler's metrics (`schedule_metrics`) are watchers.

Not for: running anything (`scheduler`, `runner`) or what a watcher does with what it is told.
"""

from __future__ import annotations

from pathlib import Path

from chaos.experiments import Experiment
from chaos.journal import Journal


class RunWatcher:
    """Told of each run as it happens; every method does nothing unless overridden. A watcher
    must not raise: a run goes on whatever its watchers make of it."""

    def started(self, path: Path, experiment: Experiment) -> None:
        """A run of `experiment` (from `path`) starts."""

    def ended(self, journal: Journal) -> None:
        """A run ended with a verdict; its journal is written."""

    def broke(self, path: Path, experiment: Experiment, error: Exception) -> None:
        """A run could not be made (the testbed would not start, the lock was taken, ...)."""

    def fault_active(self, active: bool) -> None:
        """A fault was injected (True), or every fault of the run was rolled back (False)."""

    def next_run(self, at: float) -> None:
        """The schedule's next run is due at `at` (unix seconds)."""
