"""The journal of one experiment run: what was planned, what was done, what was seen and the
verdict, written as JSON so a person who was not there can read what happened (and `chaos
report` can chart it). Not for: deciding the verdict (see `hypotheses`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from common.validation import describe_problems

TIMELINE_ORDER = (
    "load_started",
    "fault_injected",
    "first_sensor_event",
    "decision",
    "promotion",
    "topology_published",
    "first_acknowledged_write",
    "first_write_after_switch",
    "rolled_back",
    "load_drained",
)


# How a run narrates to its operator as it goes (the console); the journal is its record.
Say = Callable[[str], None]


class TimelineEntry(BaseModel):
    name: str
    at: float
    offset: float = Field(description="seconds after the fault (negative: before it)")
    detail: str = ""


class ProbeOutcome(BaseModel):
    probe: str
    ok: bool
    detail: str
    skipped: str | None = Field(
        None, description="why it was not checked (then ok is False and no verdict counts it)"
    )


class HypothesisOutcome(BaseModel):
    hypothesis: str
    ok: bool
    expected: str
    measured: Any
    detail: str = ""
    skipped: str | None = Field(
        None, description="why it was not judged (then ok is False and the verdict leaves it out)"
    )

    @property
    def judged(self) -> bool:
        return self.skipped is None


class Journal(BaseModel):
    run_id: str
    experiment: str
    experiment_file: str | None = None
    deployment: str
    environment: str
    failover: Literal["lazarus", "sentinel"] = Field(
        "lazarus", description="who failed the deployment's shards over"
    )
    ack: Literal["wait", "async"] | None = Field(
        None, description="the enqueue acknowledgement (None: a target that does not say)"
    )
    sentinel_timers: dict[str, int] | None = Field(
        None,
        description="under Sentinel, its down_after_ms and failover_timeout_ms for the first "
        "shard, as a sentinel answered at the run's start (None: not Sentinel, or none answered)",
    )
    started_at: float
    ended_at: float | None = None
    dry_run: bool = False
    shard: str | None = None
    status: Literal["running", "completed", "aborted", "interrupted", "error"] = "running"
    verdict: Literal["passed", "failed", "aborted", "not_run"] = "not_run"
    steady_state_before: list[ProbeOutcome] = Field(default_factory=list)
    steady_state_after: list[ProbeOutcome] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    faults: list[dict[str, Any]] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    hypotheses: list[HypothesisOutcome] = Field(default_factory=list)
    measures: dict[str, Any] = Field(
        default_factory=dict,
        description="what every completed run measures whatever its hypotheses, for the "
        "side-by-side report: earliest_delivery_before_rate_seconds, primaries_answering "
        "(`chaos.hypotheses.comparable_measures`)",
    )
    load: dict[str, Any] = Field(default_factory=dict)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    leftovers: list[str] = Field(
        default_factory=list,
        description="Docker faults an earlier, killed run left in force: each undone before "
        "this run, or why not (another host's, the engine refused)",
    )

    def mark(self, name: str, at: float, fault_at: float | None, detail: str = "") -> None:
        if any(entry.name == name for entry in self.timeline):
            return
        offset = at - fault_at if fault_at is not None else 0.0
        self.timeline.append(
            TimelineEntry(name=name, at=at, offset=round(offset, 4), detail=detail)
        )
        self.timeline.sort(key=lambda e: e.at)

    def measure_from_fault(self) -> None:
        """Express every offset relative to the fault (known only once it happened)."""
        fault = self.moment("fault_injected")
        if fault is not None:
            for entry in self.timeline:
                entry.offset = round(entry.at - fault, 4)

    def moment(self, name: str) -> float | None:
        return next((e.at for e in self.timeline if e.name == name), None)

    def recovery_seconds(self) -> float | None:
        """Fault to the first acknowledged write on the faulted shard; under Sentinel once it
        promoted, to the first one sent after the API routed to the promoted primary."""
        fault, recovered = self.moment("fault_injected"), self.moment(self.recovery_mark)
        return None if fault is None or recovered is None else recovered - fault

    @property
    def recovery_mark(self) -> str:
        """The timeline mark recovery is measured to. Under Sentinel a primary cut off on the
        clients' side may acknowledge what its demotion discards (at once with asynchronous
        acknowledgement, and consumers may even receive it first; a target that does not say
        its `ack` may be either): once a replica was promoted, only a write sent after the API
        routes there shows a recovery, whatever the acknowledgement."""
        if self.failover == "sentinel" and self.moment("promotion") is not None:
            return "first_write_after_switch"
        return "first_acknowledged_write"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.run_id}.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(json.loads(self.model_dump_json()), indent=2))
        temporary.replace(path)
        return path


def read_journals(directory: Path, unreadable: list[str] | None = None) -> list[Journal]:
    """Every journal in `directory`: ours, and Chaos Toolkit's (`journal.json` as `chaostoolkit
    run` writes it, read by `chaos.ctk.journals`); other JSON files are skipped. A file that is
    a journal but cannot be read (a hand-edited field of the wrong type) is left out too, and
    why (its path and the field) is added to `unreadable`, for the report to say: a run that
    silently vanished would skew the figures without anyone knowing."""
    from chaos.ctk.journals import from_ctk, is_ctk_journal

    journals = []
    for path in sorted(directory.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            # Not JSON (or not a file: a directory named *.json; or nested past the parser's
            # depth, which is no journal either).
            continue
        ctk = is_ctk_journal(raw)
        try:
            journals.append(from_ctk(raw, path) if ctk else Journal.model_validate(raw))
        except (ValueError, KeyError, TypeError) as error:
            if unreadable is None or not (ctk or _looks_like_ours(raw)):
                continue
            if isinstance(error, ValidationError):
                problem = describe_problems(error)
            else:  # from_ctk's own refusals name the file and field; a KeyError the key
                problem = f"no {error}" if isinstance(error, KeyError) else str(error)
            unreadable.append(problem if problem.startswith(str(path)) else f"{path}: {problem}")
    return sorted(journals, key=lambda j: j.started_at)


def _looks_like_ours(raw: object) -> bool:
    """Whether `raw` was meant as one of our journals (not some other JSON in the directory)."""
    return isinstance(raw, dict) and "run_id" in raw and "started_at" in raw
