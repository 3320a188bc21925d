"""Journals in Chaos Toolkit's shape, both ways: `from_ctk` reads a `journal.json` as
`chaostoolkit run` writes it (chaoslib's `initialize_run_journal` and `execute_activity`: status,
deviated, steady_states before/after with each probe's output and tolerance_met, run[],
rollbacks[], start/end as ISO times, duration) into our `Journal`, so `ratequeue-chaos report`
charts it next to our own runs (a journal of another shape, hand-edited or cut short, is
refused naming the field: `CtkJournal`); `to_ctk` writes one of our journals in that shape
(`ratequeue-chaos export-journal`).

Not for: running anything, or the report's drawing (see `chaos.report`).
"""

from __future__ import annotations

import json
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    PlainValidator,
    Strict,
    Tag,
    ValidationError,
)

from chaos.journal import HypothesisOutcome, Journal, ProbeOutcome, TimelineEntry
from common.validation import describe_problems, quoted

ACTIONS_MODULE = "chaos.ctk.actions"
PROBES_MODULE = "chaos.ctk.probes"
JOURNALS_MODULE = "chaos.ctk.journals"
FAULT_FUNCS = frozenset({"kill", "pause", "blackhole", "inject"})
# Our actions that return the faults they injected or rolled back.
FAULT_LIST_FUNCS = FAULT_FUNCS | {"resume", "remove_blackholes", "roll_back_all"}
# Our steady-state probes and hypotheses, by the extension's probe that measures each.
PROBE_OF = {
    **{
        name: name
        for name in (
            "api_healthy",
            "controllers_healthy",
            "every_shard_writable",
            "one_primary_per_shard",
            "replicas_attached",
            "acknowledged_lost",
            "duplicates",
        )
    },
    "recovered_within": "recovery_seconds",
    "rate_limits_held": "rate_overshoot_seconds",
    "not_remediated": "promoted_shards",
}
# The extension's probes that return a bool (CTK tolerance `true`); the others return a number.
BOOL_PROBES = frozenset(
    {"api_healthy", "controllers_healthy", "every_shard_writable", "one_primary_per_shard",
     "replicas_attached"}
)  # fmt: skip

# chaoslib's run statuses, as ours.
_STATUS = {
    "completed": "completed",
    "failed": "error",
    "aborted": "aborted",
    "interrupted": "interrupted",
    None: "running",
}
_CTK_STATUS = {ours: theirs for theirs, ours in _STATUS.items()}


class _Open(BaseModel):
    # What the report reads is typed; anything else an export carries is let through.
    model_config = ConfigDict(extra="allow")


def _moment(value: float) -> float:
    """A time in seconds since 1970 that is a date (the report shows each as one)."""
    try:
        datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"must be a time in seconds since 1970, not {quoted(value)}") from None
    return value


def _ctk_time(value: Any) -> float:
    """A time as chaoslib writes it (`datetime.now(timezone.utc).isoformat()`), in seconds."""
    if isinstance(value, str):
        try:
            return _moment(_timestamp(value))
        except (ValueError, OverflowError):
            pass
    raise ValueError(
        "must be an ISO 8601 time, as chaoslib writes it (2026-12-04T22:31:19.5+00:00), "
        f"not {quoted(value)}"
    )


# chaoslib's journal and each activity's run start (and end) at one of these; our faults
# carry theirs in seconds.
CtkTime = Annotated[float, PlainValidator(_ctk_time)]
Moment = Annotated[float, AfterValidator(_moment)]


class Whereabouts(_Open):
    # The report names both (`chaos.comparison.lost_count`).
    held: int
    gone: int
    unknown: int = 0


class Load(_Open):
    acknowledged: int | None = None
    lost: int | None = None
    duplicates: int | None = None
    undelivered_whereabouts: Whereabouts | None = None


class Measures(_Open):
    earliest_delivery_before_rate_seconds: float | None = None
    primaries_answering: dict[str, list[str]] | None = None


class JudgedArguments(_Open):
    # A `judged` record's: our expectation in words, read back as the hypothesis's `expected`.
    expected: str | None = None
    measured: Any = None
    ok: bool | None = None


class Provider(_Open):
    # Another provider's arguments are its own (a process provider's may be a string or list).
    module: str | None = None
    func: str | None = None


class JudgedProvider(Provider):
    """`judged`'s, our record of a hypothesis no extension probe measures."""

    arguments: JudgedArguments = Field(default_factory=JudgedArguments)


def _provider_kind(value: Any) -> str:
    # Tags unlike any field's name: an error's location hides them, and must not hide a field.
    if isinstance(value, JudgedProvider) or (
        isinstance(value, dict)
        and value.get("module") == JOURNALS_MODULE
        and value.get("func") == "judged"
    ):
        return "judged_provider"
    return "any_provider"


class Activity(_Open):
    name: str = "?"
    type: str | None = None
    # Exports before `judged` had our expectation here.
    expected: str | None = None
    tolerance: Any = None
    provider: Annotated[
        Annotated[JudgedProvider, Tag("judged_provider")]
        | Annotated[Provider, Tag("any_provider")],
        Discriminator(_provider_kind),
    ] = Field(default_factory=Provider)


class ActivityRun(_Open):
    """One activity's run as chaoslib writes it (activity.py, `execute_activity`): `status`
    and `end` absent when the run was interrupted during it, `exception` only when it failed,
    `tolerance_met` only for a steady state's probe."""

    activity: Activity
    start: CtkTime
    status: Literal["succeeded", "failed"] | None = None
    output: Any = None
    exception: list[str] = Field(default_factory=list)
    tolerance_met: bool | None = None


class Fault(_Open):
    """A fault as our extension's actions return it (`chaos.ctk.actions`); the report shows
    action, target, backend and the moments."""

    action: str
    target: str
    backend: str | None
    injected_at: Moment
    rolled_back_at: Moment | None = None
    rollback_error: str | None = None
    shard: str | None = None


class FaultsRun(ActivityRun):
    """A run of one of our actions that return the faults they injected or rolled back (None:
    a dry run, or a failed one)."""

    output: list[Fault] | None = None


class RecoveryRun(ActivityRun):
    """Our `recovery_seconds` probe's run, succeeded (None: a dry run)."""

    output: Annotated[FiniteFloat, Strict()] | None = None


class LostRun(ActivityRun):
    """An `acknowledged_lost` probe's run, succeeded: how many acknowledged were lost."""

    output: Annotated[int, Strict()] | None = None


# Our probes whose succeeded output the report reads as a figure.
_PROBE_RUN_KINDS = {"recovery_seconds": "recovery_run", "acknowledged_lost": "lost_run"}


def _run_kind(value: Any) -> str:
    # What a run's output is read as, by whose activity ran (tags unlike any field's name).
    for kind, model in _RUN_KINDS.items():
        if type(value) is model:
            return kind
    run = value if isinstance(value, dict) else {}
    activity = run.get("activity")
    provider = activity.get("provider") if isinstance(activity, dict) else None
    provider = provider if isinstance(provider, dict) else {}
    module, func = provider.get("module"), provider.get("func")
    if module == ACTIONS_MODULE and func in FAULT_LIST_FUNCS:
        return "faults_run"
    if run.get("status") == "succeeded" and module == PROBES_MODULE:
        return _PROBE_RUN_KINDS.get(func, "any_run")
    return "any_run"


_RUN_KINDS: dict[str, type[ActivityRun]] = {
    "faults_run": FaultsRun,
    "recovery_run": RecoveryRun,
    "lost_run": LostRun,
    "any_run": ActivityRun,
}
AnyRun = Annotated[
    Annotated[FaultsRun, Tag("faults_run")]
    | Annotated[RecoveryRun, Tag("recovery_run")]
    | Annotated[LostRun, Tag("lost_run")]
    | Annotated[ActivityRun, Tag("any_run")],
    Discriminator(_run_kind),
]
# The unions' tags: not fields of the journal, left out of an error's location.
_TAGS = frozenset({*_RUN_KINDS, "judged_provider", "any_provider"})


class SteadyState(_Open):
    """A steady state as chaoslib writes it (hypothesis.py, `run_steady_state_hypothesis`):
    its probes up to the first one not met."""

    steady_state_met: bool | None
    probes: list[AnyRun]


class SteadyStates(_Open):
    # None: a stage chaoslib did not run.
    before: SteadyState | None = None
    after: SteadyState | None = None


class CtkExperiment(_Open):
    title: str | None = None


class RatequeueBlock(_Open):
    """The `ratequeue` block `to_ctk` writes: what chaoslib's fields cannot say about our run.
    Every key is optional, so exports from before a key was added still read."""

    run_id: str | None = None
    verdict: Literal["passed", "failed", "aborted", "not_run"] | None = None
    failover: Literal["lazarus", "sentinel"] = "lazarus"
    ack: Literal["wait", "async"] | None = None
    sentinel_timers: dict[str, int] | None = None
    measures: Measures = Field(default_factory=Measures)
    recovery_seconds: float | None = None
    fault_at: float | None = None
    load: Load = Field(default_factory=Load)
    after_unlisted: list[AnyRun] = Field(default_factory=list)


class CtkJournal(_Open):
    """What `from_ctk` reads of a CTK journal, as chaoslib writes it (run.py,
    `initialize_run_journal`: status None until the run ends, no `end` for a run stopped before
    it wrote one) and our `ratequeue` block where `to_ctk` wrote one."""

    experiment: CtkExperiment
    node: str | None = None
    start: CtkTime
    end: CtkTime | None = None
    status: Literal["completed", "failed", "aborted", "interrupted"] | None
    deviated: bool
    steady_states: SteadyStates
    run: list[AnyRun]
    rollbacks: list[AnyRun] = Field(default_factory=list)
    ratequeue: RatequeueBlock | None = None


def _ctk_journal(raw: dict[str, Any], source: Path) -> CtkJournal:
    """The journal, validated: a hand-edited or truncated one of the wrong shape is refused
    naming the field and what was expected (ValueError), rather than crash the report or skew
    its figures."""
    try:
        return CtkJournal.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{source}: {describe_problems(error, hide=_TAGS)}") from None


def is_ctk_journal(raw: object) -> bool:
    """Whether `raw` is a journal chaoslib wrote (the keys its `initialize_run_journal` sets)."""
    return (
        isinstance(raw, dict)
        and isinstance(raw.get("experiment"), dict)
        and isinstance(raw.get("steady_states"), dict)
        and isinstance(raw.get("run"), list)
        and "deviated" in raw
    )


def _timestamp(iso: str) -> float:
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _failure(run: ActivityRun) -> str:
    return run.exception[-1].strip() if run.exception else ""


def _probe_ok(run: ActivityRun) -> bool:
    return run.status == "succeeded" and run.tolerance_met is not False


def _probe_outcomes(state: SteadyState | None) -> list[ProbeOutcome]:
    outcomes = []
    for run in state.probes if state else []:
        tolerance = run.activity.tolerance
        detail = _failure(run) or f"returned {run.output!r}, tolerance {tolerance!r}"
        outcomes.append(ProbeOutcome(probe=run.activity.name, ok=_probe_ok(run), detail=detail))
    return outcomes


def from_ctk(raw: dict[str, Any], source: Path) -> Journal:
    """Our journal of the run a CTK journal records; the verdict is ours where `to_ctk` wrote
    it (CTK's fields cannot say every verdict of ours), else CTK's (passed: completed, steady
    state met before, not deviated). A journal of the wrong shape is refused (ValueError)
    naming the field."""
    ctk = _ctk_journal(raw, source)
    status = ctk.status
    before, after = ctk.steady_states.before, ctk.steady_states.after
    ours = ctk.ratequeue or RatequeueBlock()  # none in chaoslib's own journal
    if ours.verdict is not None:
        verdict = ours.verdict
    elif ctk.deviated and status in ("completed", "failed"):
        # chaoslib (`run_deviation_validation_hypothesis`) sets deviated when the steady state
        # after the method is not met, status failed if one of its probes raised: either way
        # the method ran and the hypothesis did not hold.
        verdict = "failed"
    elif status == "completed" and (before is None or before.steady_state_met is not False):
        verdict = "passed"
    else:
        # Steady state not met before the method (nothing was touched), or CTK's `failed` not
        # deviated: a probe raised before the method or during it; nothing was judged against
        # the hypothesis, as our aborted run.
        verdict = "aborted"
    journal = Journal(
        run_id=f"{source.stem}-{datetime.fromtimestamp(ctk.start, UTC):%Y%m%dT%H%M%S}",
        experiment=source.name if ctk.experiment.title is None else ctk.experiment.title,
        experiment_file=str(source),
        deployment=ctk.node or "chaostoolkit",
        environment="chaostoolkit",
        started_at=ctk.start,
        ended_at=ctk.end,
        status=_STATUS[status],
        verdict=verdict,
        # Who failed over and how enqueues were acknowledged: the report compares managers
        # by these (`chaos.comparison.manager_of`); chaoslib's own journals say neither.
        failover=ours.failover,
        ack=ours.ack,
        sentinel_timers=ours.sentinel_timers,
        measures=ours.measures.model_dump(exclude_unset=True),
        steady_state_before=_probe_outcomes(before),
    )
    # CTK's hypothesis is its steady state after the method: our hypotheses, each probe judged
    # by its tolerance (not listed again as after-probes).
    # A hypothesis exported as a record (`to_ctk`) carries our expectation in words; what
    # `to_ctk` measured but chaoslib would not have listed is in our extension, after them.
    listed = after.probes if after else []
    journal.hypotheses = [_hypothesis_outcome(run) for run in [*listed, *ours.after_unlisted]]
    _read_activities(journal, ctk)
    # Our load's figures as measured, not as far as the listed probes tell them.
    journal.load = {**journal.load, **ours.load.model_dump(exclude_unset=True)}
    journal.measure_from_fault()
    return journal


def _hypothesis_outcome(run: ActivityRun) -> HypothesisOutcome:
    activity, provider = run.activity, run.activity.provider
    arguments = provider.arguments if isinstance(provider, JudgedProvider) else JudgedArguments()
    return HypothesisOutcome(
        hypothesis=activity.name,
        ok=_probe_ok(run),
        # Exports before `judged` had our expectation on the activity itself.
        expected=arguments.expected or activity.expected or json.dumps(activity.tolerance),
        measured=arguments.measured if "measured" in arguments.model_fields_set else run.output,
        detail=_failure(run),
    )


def judged(expected: str, measured: Any, ok: bool) -> bool:
    """A hypothesis no extension probe measures, as an exported journal records it: what we
    expected, what we measured and our verdict, which this returns (chaoslib requires every
    activity to have a provider it can call; ours re-judges nothing it cannot observe)."""
    return ok


def _read_activities(journal: Journal, ctk: CtkJournal) -> None:
    """The method's and rollbacks' activities on the timeline; our actions' faults and our
    probes' measurements where they say more (fault moment, recovery, lost count)."""
    rolled_back: dict[tuple[str, float], float] = {}
    for run in ctk.rollbacks:
        if isinstance(run, FaultsRun):
            for fault in run.output or []:
                if fault.rolled_back_at:
                    rolled_back[(fault.target, fault.injected_at)] = fault.rolled_back_at
    for run in [*ctk.run, *ctk.rollbacks]:
        activity, provider = run.activity, run.activity.provider
        journal.timeline.append(
            TimelineEntry(
                name=activity.name, at=run.start, offset=0.0, detail=f"{activity.type} {run.status}"
            )
        )
        if run.status != "succeeded":
            journal.errors.append(f"{activity.name}: {_failure(run) or run.status}")
            continue
        if isinstance(run, FaultsRun) and provider.func in FAULT_FUNCS:
            for fault in run.output or []:
                key = (fault.target, fault.injected_at)
                fault.rolled_back_at = fault.rolled_back_at or rolled_back.get(key)
                journal.faults.append(fault.model_dump(exclude_unset=True))
                journal.shard = journal.shard or fault.shard
                journal.mark(
                    "fault_injected", fault.injected_at, None, f"{fault.action} {fault.target}"
                )
        fault_at = journal.moment("fault_injected")
        if isinstance(run, RecoveryRun) and fault_at and run.output is not None:
            journal.mark("first_acknowledged_write", fault_at + run.output, fault_at)
    before, after = ctk.steady_states.before, ctk.steady_states.after
    for run in [*(before.probes if before else []), *(after.probes if after else [])]:
        if run.status != "succeeded":
            journal.errors.append(f"{run.activity.name}: {_failure(run)}")
        elif isinstance(run, LostRun):
            journal.load["lost"] = run.output
    journal.timeline.sort(key=lambda e: e.at)


def to_ctk(journal: Journal) -> dict[str, Any]:
    """`journal` in the shape chaoslib writes, its activities named as the CTK extension's
    (`chaos.ctk.actions`, `chaos.ctk.probes`) so the experiment part is one CTK accepts."""
    started = journal.started_at
    ended = journal.ended_at or started
    fault_at = journal.moment("fault_injected")

    def probe_run(outcome: ProbeOutcome, at: float) -> dict[str, Any]:
        activity = _probe_activity(outcome.probe, True)
        return _run(activity, outcome.ok, outcome.ok, at)

    def hypothesis_run(outcome: HypothesisOutcome) -> dict[str, Any]:
        activity, output = _hypothesis_activity(outcome)
        return _run(activity, output, outcome.ok, ended)

    # chaoslib has no skipped probe: what we did not check or judge is left out, as chaoslib
    # leaves out a steady state it does not run.
    checked_before = [p for p in journal.steady_state_before if p.skipped is None]
    before = [probe_run(p, started) for p in checked_before]
    after = [probe_run(p, ended) for p in journal.steady_state_after if p.skipped is None] + [
        hypothesis_run(h) for h in journal.hypotheses if h.judged
    ]
    state_before = _steady_state(before)
    # chaoslib runs the steady state after the method only for an experiment with a steady-state
    # hypothesis whose before held (run.py: `run_gate_hypothesis` returns None otherwise), and
    # only when the run was not interrupted or aborted on the way (run.py: `Runner._run` skips
    # `run_deviation_validation_hypothesis` once the journal's status is either).
    ran_after = (
        state_before is not None
        and state_before["steady_state_met"]
        and journal.status not in ("interrupted", "aborted")
    )
    state_after = _steady_state(after) if ran_after else None
    # What chaoslib would not have listed (after its first probe not met, or no stage after) we
    # still measured: our extension carries it, so the read-back has the run's figures.
    after_unlisted = after[len(state_after["probes"]) if state_after else 0 :]
    method = [_fault_activity(f) for f in journal.faults]
    runs = [
        {**_run(activity, [fault], None, fault["injected_at"]), "status": "succeeded"}
        for activity, fault in zip(method, journal.faults, strict=True)
    ]
    recovery = journal.recovery_seconds()
    if fault_at is not None and recovery is not None:
        # What CTK's `recovery_seconds` probe would have returned, ended when it was measured.
        probe = {"type": "probe", "name": "recovery-seconds",
                 "provider": {"type": "python", "module": PROBES_MODULE,
                              "func": "recovery_seconds"}}  # fmt: skip
        runs.append(_run(probe, round(recovery, 3), None, fault_at + recovery))
    undone = [f for f in journal.faults if f.get("rolled_back_at") or f.get("rollback_error")]
    rollbacks = [_rollback_run(f) for f in undone]
    # chaoslib's deviated is its after steady state not met, nothing else: a failed verdict
    # it cannot say (an error, every hypothesis skipped) is our extension's `verdict`.
    deviated = state_after is not None and not state_after["steady_state_met"]
    status = _CTK_STATUS[journal.status]
    if state_before is not None and not state_before["steady_state_met"]:
        # Steady state not met before the method: chaoslib (run.py, `run_gate_hypothesis`)
        # says completed, failed only when a probe itself failed (raised).
        failed = any(run["status"] != "succeeded" for run in state_before["probes"])
        status = "failed" if failed else "completed"
    return {
        "chaoslib-version": _chaoslib_version(),
        "platform": platform.platform(),
        "node": platform.node(),
        "experiment": {
            "title": journal.experiment,
            "description": "; ".join(journal.plan) or journal.experiment,
            "tags": ["ratequeue", journal.environment],
            **(
                {
                    "steady-state-hypothesis": {
                        "title": "steady state",
                        "probes": [_probe_activity(p.probe, True) for p in checked_before],
                    }
                }
                if checked_before
                else {}
            ),
            "method": method or [_action("roll_back_all", "nothing-injected", {})],
            "rollbacks": [_action("roll_back_all", "roll-back-all", {})],
        },
        "start": _iso(started),
        "status": status,
        "deviated": deviated,
        "steady_states": {
            "before": state_before,
            "after": state_after,
            "during": [],
        },
        "run": runs,
        "rollbacks": rollbacks,
        "end": _iso(ended),
        "duration": ended - started,
        "ratequeue": {
            "run_id": journal.run_id,
            "verdict": journal.verdict,
            "failover": journal.failover,
            "ack": journal.ack,
            "sentinel_timers": journal.sentinel_timers,
            "measures": journal.measures,
            "recovery_seconds": journal.recovery_seconds(),
            "fault_at": fault_at,
            "load": journal.load,
            "after_unlisted": after_unlisted,
        },
    }


def _steady_state(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A stage's steady state as chaoslib writes it; None for a stage with no probe to run,
    which is what chaoslib writes for an experiment without a steady-state hypothesis (run.py:
    `has_steady_state_hypothesis_with_probes`), or for the stage its `--hypothesis-strategy`
    skips (before None with after written: `after-method-only`). chaoslib stops at the first
    probe not met (hypothesis.py, `run_steady_state_hypothesis`): the later ones are left out."""
    if not runs:
        return None
    listed = []
    for run in runs:
        listed.append(run)
        if not run["tolerance_met"]:
            return {"steady_state_met": False, "probes": listed}
    return {"steady_state_met": True, "probes": listed}


def _chaoslib_version() -> str | None:
    try:
        return metadata.version("chaostoolkit-lib")
    except metadata.PackageNotFoundError:
        return None


def _probe_activity(name: str, tolerance: Any) -> dict[str, Any]:
    """A probe activity: the extension's probe that measures `name` (a steady-state probe, or
    the probe behind a hypothesis), judged by `tolerance`."""
    provider = {"type": "python", "module": PROBES_MODULE, "func": PROBE_OF[name]}
    return {"type": "probe", "name": name, "tolerance": tolerance, "provider": provider}


def _hypothesis_activity(outcome: HypothesisOutcome) -> tuple[dict[str, Any], Any]:
    """The activity and output of a hypothesis in CTK's after steady state: the extension's
    probe with the tolerance CTK would judge its value by where one measures it; else a record
    of our judgement (`judged`, given our expectation in words and the measurement, returns our
    verdict, tolerance `true`)."""
    name, measured = outcome.hypothesis, outcome.measured
    if PROBE_OF.get(name) in BOOL_PROBES:
        return _probe_activity(name, True), outcome.ok
    bound = re.match(r"<= (\d+(?:\.\d+)?)", outcome.expected)
    numeric = isinstance(measured, int | float) and not isinstance(measured, bool)
    if name in PROBE_OF and bound is not None and numeric:
        upper = float(bound.group(1))
        tolerance = 0 if upper == 0 else {"type": "range", "range": [0, upper]}
        # As chaoslib's `within_tolerance` judges it (equal to an int, inside a range). Where it
        # would judge otherwise than we did (0 lost of 0 acknowledged is not ok: nothing was
        # proven), the probe would contradict itself: the record of our judgement says it.
        held = measured == 0 if upper == 0 else 0 <= measured <= upper
        if held is outcome.ok:
            return _probe_activity(name, tolerance), measured
    arguments = {"expected": outcome.expected, "measured": measured, "ok": outcome.ok}
    provider = {"type": "python", "module": JOURNALS_MODULE, "func": "judged",
                "arguments": arguments}  # fmt: skip
    return {"type": "probe", "name": name, "tolerance": True, "provider": provider}, outcome.ok


def _action(func: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    provider: dict[str, Any] = {"type": "python", "module": ACTIONS_MODULE, "func": func}
    if arguments:
        provider["arguments"] = arguments
    return {"type": "action", "name": name, "provider": provider}


def _fault_activity(fault: dict[str, Any]) -> dict[str, Any]:
    arguments = {
        "action": fault["action"],
        "role": fault.get("role") or "primary",
        "shard": fault.get("shard") or "random",
        "backend": fault.get("backend"),
    }
    duration = (fault.get("details") or {}).get("duration")
    if duration:
        arguments["seconds"] = duration
    return _action("inject", f"{fault['action']} {fault['target']}", arguments)


def _rollback_run(fault: dict[str, Any]) -> dict[str, Any]:
    at = fault.get("rolled_back_at") or fault["injected_at"]
    run = _run(_action("roll_back_all", "roll-back-all", {}), [fault], None, at)
    if fault.get("rollback_error"):
        run["status"] = "failed"
        run["exception"] = [f"FaultError: {fault['rollback_error']}\n"]
    return run


def _run(activity: dict[str, Any], output: Any, ok: bool | None, at: float) -> dict[str, Any]:
    """An activity's run as chaoslib writes it, succeeded: an output out of tolerance is not a
    failure (chaoslib writes `exception` only on a failed run, one whose activity raised)."""
    run: dict[str, Any] = {
        "activity": activity,
        "output": output,
        "start": _iso(at),
        "status": "succeeded",
        "end": _iso(at),
        "duration": 0.0,
    }
    if ok is not None:
        run["tolerance_met"] = ok
    return run
