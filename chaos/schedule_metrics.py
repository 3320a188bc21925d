"""Prometheus metrics of a `ratequeue-chaos run` schedule (`--metrics-port N`), served on /metrics
while it runs: runs by verdict, the last run's recovery seconds and acknowledged messages lost, when
the last run ended and the next is due, and whether a fault is active now.

Not for: the API's, controllers' or sensors' metrics (each serves its own), or running anything.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from chaos.experiments import Experiment
from chaos.journal import Journal
from chaos.run_watchers import RunWatcher
from common.metrics_server import MetricsServer

VERDICTS = ("passed", "failed", "aborted", "not_run")


class ScheduleMetrics(MetricsServer, RunWatcher):
    """The schedule's metrics in a registry of their own; `serve` exposes them over HTTP."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.runs = Counter(
            "chaos_runs", "Runs ended, by verdict (not_run: the run could not be made)",
            ["verdict"], registry=self.registry,
        )  # fmt: skip
        for verdict in VERDICTS:  # every verdict shows from the start, at 0
            self.runs.labels(verdict)
        self.recovery = Gauge(
            "chaos_last_run_recovery_seconds",
            "Seconds from the last run's fault to its first acknowledged write (NaN: none)",
            registry=self.registry,
        )
        self.lost = Gauge(
            "chaos_last_run_acknowledged_lost",
            "Acknowledged messages the last run never delivered (NaN: no load ran)",
            registry=self.registry,
        )
        self.last_run = Gauge(
            "chaos_last_run_timestamp_seconds", "When the last run ended", registry=self.registry
        )
        self.next_run_at = Gauge(
            "chaos_next_run_timestamp_seconds", "When the next run is due", registry=self.registry
        )
        self.fault = Gauge(
            "chaos_fault_active", "1 while a run's fault is injected and not rolled back",
            registry=self.registry,
        )  # fmt: skip

    def ended(self, journal: Journal) -> None:
        self.runs.labels(journal.verdict).inc()
        self.last_run.set(journal.ended_at or time.time())
        # The timeline's offsets are seconds after the fault once the run measured from it.
        recovered = next(
            (e.offset for e in journal.timeline if e.name == "first_acknowledged_write"), None
        )
        self.recovery.set(math.nan if recovered is None else recovered)
        lost = journal.load.get("lost")
        self.lost.set(math.nan if lost is None else lost)
        self.fault.set(0)  # whatever the run did, its rollbacks are over

    def broke(self, path: Path, experiment: Experiment, error: Exception) -> None:
        self.runs.labels("not_run").inc()
        self.last_run.set(time.time())
        self.fault.set(0)

    def fault_active(self, active: bool) -> None:
        self.fault.set(1 if active else 0)

    def next_run(self, at: float) -> None:
        self.next_run_at.set(at)
