"""Settings of `ratequeue-chaos run` as the long-running scheduler (the compose `chaos` service):
when and how often it runs, where it journals, whom it tells, where it serves /metrics. Every
field is an option and a `CHAOS_*` environment variable (`common.settings_options`); the
agent's are `CHAOS_AGENT_*` (`chaos.agent.settings`), none of these starts with that.

Not for: what one invocation asks (the experiment files, `--dry-run`, `--json` stay plain
arguments of the command), or the experiments' own contents (`chaos.experiments`).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from chaos.cron_schedule import CronSchedule
from chaos.testbed import AckMode, ControlBackend, FailoverManager
from common.durations import check_within, parse_duration
from common.errors import SettingProblem
from common.settings import Setting
from common.validation import HttpUrlText


def _cron_text(expression: str | None) -> str | None:
    if expression is not None:
        CronSchedule(expression)  # a ValueError naming the bad field
    return expression


# `90`, `500ms`, `4h`: seconds (`common.durations`).
AS_DURATION = (BeforeValidator(parse_duration), Setting(metavar="DURATION"))

# The shortest --every: a run leaves shards failing over and replicas resyncing, and the next
# run's steady-state probes need the testbed settled; back to back (`--every 0`), each run would
# measure the last one's aftermath. Read when a setting is checked (a test may lower it).
MIN_EVERY = 60.0
# The longest --every or --jitter: a schedule rarer than monthly is not one, and times far past
# it overflow the platform's clock (`--every 99999999h` crashed the scheduler's log line).
MAX_EVERY = 30 * 24 * 3600.0
# A cron expression's gaps vary (`0 9 * * 1-5`): its closest runs are looked for among this many.
CRON_GAPS_CHECKED = 20


class ScheduleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Path | None = Field(None, description="deployment file (unset: the embedded testbed)")
    every: Annotated[float | None, *AS_DURATION] = Field(
        None, description="run again every DURATION (e.g. 4h; 1 min to 30 days)"
    )
    cron: Annotated[str | None, AfterValidator(_cron_text), Setting(metavar="EXPRESSION")] = Field(
        None, description="run at the times a cron expression names, in UTC ('0 */4 * * *')"
    )
    jitter: Annotated[float, *AS_DURATION] = Field(
        0.0,
        description="random +/- DURATION around each run time of --every or --cron (at most "
        "30 days, and half the runs' shortest gap less 1 min)",
    )
    journal_dir: Path = Field(Path("chaos-journals"), description="where runs are journaled")
    allow_prod: bool = Field(False, description="allow a prod target")
    runs: int | None = Field(None, ge=1, description="stop after this many runs ended")
    notifications: Path | None = Field(
        None, description="channels (YAML) announcing each run's start and verdict"
    )
    journal_url: HttpUrlText | None = Field(
        None,
        description="URL the journal directory is served at: each run's announcement links "
        "its journal there (JOURNAL_URL/RUN_ID.json)",
    )
    notify_service: str = Field(
        "chaos", min_length=1, description="the service whose route in --notifications is used"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus /metrics on this port"
    )
    metrics_host: str = Field("127.0.0.1", description="address for /metrics")
    # The embedded testbed's make-up over each file's: settings of the scheduler like the
    # others. A target deployment has its own make-up (its target file), so with `--target`
    # they are refused: they could only skip experiments, silently.
    control: ControlBackend | None = Field(
        None, description="the embedded testbed's store, over each file's `control`"
    )
    failover: FailoverManager | None = Field(
        None, description="the embedded testbed's failover manager, over each file's `failover`"
    )
    ack: AckMode | None = Field(
        None, description="the embedded testbed's enqueue acknowledgement, over each file's `ack`"
    )

    @field_validator("every")
    @classmethod
    def _every_in_range(cls, value: float | None) -> float | None:
        return None if value is None else check_within(value, MIN_EVERY, MAX_EVERY)

    @field_validator("jitter")
    @classmethod
    def _jitter_in_range(cls, value: float) -> float:
        return check_within(value, 0, MAX_EVERY)

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleSettings:
        if self.every is not None and self.cron is not None:
            raise SettingProblem("cron", "give --every or --cron, not both")
        if self.jitter and self.every is None and self.cron is None:
            # Without a schedule there is no run time to move: silently dropped, it would
            # hide a forgotten --every.
            raise SettingProblem("jitter", "moves a schedule's run times: give --every or --cron")
        gap = self._shortest_gap()
        if self.jitter and gap is not None and gap - 2 * self.jitter < MIN_EVERY:
            # Two runs moved toward each other by up to --jitter each must still be MIN_EVERY
            # apart, or a schedule with jitter runs back to back as `--every 0` did.
            most = max(0.0, (gap - MIN_EVERY) / 2)
            raise SettingProblem(
                "jitter",
                f"{self.jitter:g} s could start two runs less than {MIN_EVERY:g} s apart (the "
                f"schedule's runs are {gap:g} s apart); at most {most:g} s",
            )
        if self.target is not None:
            for name in ("control", "failover", "ack"):
                if getattr(self, name) is not None:
                    raise SettingProblem(
                        name,
                        f"applies to the embedded testbed only; with --target the target "
                        f"file says the deployment's {name}",
                    )
        return self

    def _shortest_gap(self) -> float | None:
        """Seconds between the schedule's closest runs: --every, or the cron expression's
        shortest gap among its next runs (None without a schedule)."""
        if self.every is not None:
            return self.every
        if self.cron is None:
            return None
        cron, at = CronSchedule(self.cron), time.time()
        times = [at := cron.next_after(at) for _ in range(CRON_GAPS_CHECKED + 1)]
        return min(later - earlier for earlier, later in itertools.pairwise(times))

    @property
    def cron_schedule(self) -> CronSchedule | None:
        return None if self.cron is None else CronSchedule(self.cron)
