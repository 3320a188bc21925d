"""Journals in Chaos Toolkit's shape, both ways: `from_ctk` reads a `journal.json` as
`chaostoolkit run` writes it (chaoslib's `initialize_run_journal` and `execute_activity`: status,
deviated, steady_states before/after with each probe's output and tolerance_met, run[],
rollbacks[], start/end as ISO times, duration) into our `Journal`, so `ratequeue-chaos report`
charts it next to our own runs; `to_ctk` writes one of our journals in that shape (`ratequeue-chaos
export-journal`).

Not for: running anything, or the report's drawing (see `chaos.report`).
"""

from __future__ import annotations

import json
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaos.journal import HypothesisOutcome, Journal, ProbeOutcome, TimelineEntry
from common.validation import describe_problems

ACTIONS_MODULE = "chaos.ctk.actions"
PROBES_MODULE = "chaos.ctk.probes"
JOURNALS_MODULE = "chaos.ctk.journals"
FAULT_FUNCS = frozenset({"kill", "pause", "blackhole", "inject"})
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
    ok: bool | None = None


class Provider(_Open):
    module: str | None = None
    func: str | None = None
    arguments: JudgedArguments = Field(default_factory=JudgedArguments)


class Activity(_Open):
    name: str = "?"
    # Exports before `judged` had our expectation here.
    expected: str | None = None
    provider: Provider = Field(default_factory=Provider)


class ProbeRun(_Open):
    activity: Activity
    status: str | None = None
    tolerance_met: bool | None = None
    exception: list[str] = Field(default_factory=list)


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
    after_unlisted: list[ProbeRun] = Field(default_factory=list)


def _ratequeue_block(raw: dict[str, Any], source: Path) -> RatequeueBlock:
    """The journal's `ratequeue` block, validated: a hand-edited one of the wrong shape is
    refused naming the field (ValueError), rather than crash the report or skew its figures."""
    block = raw.get("ratequeue")
    if block is None:
        return RatequeueBlock()  # chaoslib's own journal: nothing of ours
    try:
        return RatequeueBlock.model_validate(block)
    except ValidationError as error:
        raise ValueError(f"{source}: {describe_problems(error, within='ratequeue')}") from None


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


def _provider(run: dict[str, Any]) -> dict[str, Any]:
    return run.get("activity", {}).get("provider", {}) or {}


def _failure(run: dict[str, Any]) -> str:
    exception = run.get("exception") or []
    return str(exception[-1]).strip() if exception else ""


def _probe_ok(run: dict[str, Any]) -> bool:
    return run.get("status") == "succeeded" and run.get("tolerance_met", True) is not False


def _probe_outcomes(state: dict[str, Any] | None) -> list[ProbeOutcome]:
    outcomes = []
    for run in (state or {}).get("probes", []):
        tolerance = run.get("activity", {}).get("tolerance")
        detail = _failure(run) or f"returned {run.get('output')!r}, tolerance {tolerance!r}"
        outcomes.append(
            ProbeOutcome(probe=run["activity"].get("name", "?"), ok=_probe_ok(run), detail=detail)
        )
    return outcomes


def from_ctk(raw: dict[str, Any], source: Path) -> Journal:
    """Our journal of the run a CTK journal records; the verdict is ours where `to_ctk` wrote
    it (CTK's fields cannot say every verdict of ours), else CTK's (passed: completed, steady
    state met before, not deviated)."""
    started = _timestamp(raw["start"])
    status = raw.get("status")
    before = raw["steady_states"].get("before") or {}
    after = raw["steady_states"].get("after")
    ours = _ratequeue_block(raw, source)
    if ours.verdict is not None:
        verdict = ours.verdict
    elif raw.get("deviated") and status in ("completed", "failed"):
        # chaoslib (`run_deviation_validation_hypothesis`) sets deviated when the steady state
        # after the method is not met, status failed if one of its probes raised: either way
        # the method ran and the hypothesis did not hold.
        verdict = "failed"
    elif status == "completed" and before.get("steady_state_met") is not False:
        verdict = "passed"
    else:
        # Steady state not met before the method (nothing was touched), or CTK's `failed` not
        # deviated: a probe raised before the method or during it; nothing was judged against
        # the hypothesis, as our aborted run.
        verdict = "aborted"
    journal = Journal(
        run_id=f"{source.stem}-{datetime.fromtimestamp(started, UTC):%Y%m%dT%H%M%S}",
        experiment=raw["experiment"].get("title", source.name),
        experiment_file=str(source),
        deployment=raw.get("node") or "chaostoolkit",
        environment="chaostoolkit",
        started_at=started,
        ended_at=_timestamp(raw["end"]) if raw.get("end") else None,
        status=_STATUS.get(status, "error"),
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
    listed = (after or {}).get("probes", [])
    unlisted = [run.model_dump(exclude_unset=True) for run in ours.after_unlisted]
    journal.hypotheses = [_hypothesis_outcome(run) for run in [*listed, *unlisted]]
    _read_activities(journal, raw)
    # Our load's figures as measured, not as far as the listed probes tell them.
    journal.load = {**journal.load, **ours.load.model_dump(exclude_unset=True)}
    journal.measure_from_fault()
    return journal


def _hypothesis_outcome(run: dict[str, Any]) -> HypothesisOutcome:
    activity, provider = run["activity"], _provider(run)
    recorded = provider.get("module") == JOURNALS_MODULE and provider.get("func") == "judged"
    arguments = provider.get("arguments", {}) if recorded else {}
    return HypothesisOutcome(
        hypothesis=activity.get("name", "?"),
        ok=_probe_ok(run),
        # Exports before `judged` had our expectation on the activity itself.
        expected=arguments.get("expected")
        or activity.get("expected")
        or json.dumps(activity.get("tolerance")),
        measured=arguments["measured"] if "measured" in arguments else run.get("output"),
        detail=_failure(run),
    )


def judged(expected: str, measured: Any, ok: bool) -> bool:
    """A hypothesis no extension probe measures, as an exported journal records it: what we
    expected, what we measured and our verdict, which this returns (chaoslib requires every
    activity to have a provider it can call; ours re-judges nothing it cannot observe)."""
    return ok


def _read_activities(journal: Journal, raw: dict[str, Any]) -> None:
    """The method's and rollbacks' activities on the timeline; our actions' faults and our
    probes' measurements where they say more (fault moment, recovery, lost count)."""
    rolled_back: dict[tuple[str, float], float] = {}
    for run in raw.get("rollbacks", []):
        if _provider(run).get("module") != ACTIONS_MODULE:
            continue
        for fault in run.get("output") or []:
            if isinstance(fault, dict) and fault.get("rolled_back_at"):
                rolled_back[(fault["target"], fault["injected_at"])] = fault["rolled_back_at"]
    for run in [*raw.get("run", []), *raw.get("rollbacks", [])]:
        activity, provider = run.get("activity", {}), _provider(run)
        name = activity.get("name", "?")
        journal.timeline.append(
            TimelineEntry(
                name=name,
                at=_timestamp(run["start"]),
                offset=0.0,
                detail=f"{activity.get('type')} {run.get('status')}",
            )
        )
        if run.get("status") != "succeeded":
            journal.errors.append(f"{name}: {_failure(run) or run.get('status')}")
            continue
        func = provider.get("func")
        if provider.get("module") == ACTIONS_MODULE and func in FAULT_FUNCS:
            for fault in run.get("output") or []:
                key = (fault["target"], fault["injected_at"])
                fault["rolled_back_at"] = fault.get("rolled_back_at") or rolled_back.get(key)
                journal.faults.append(fault)
                journal.shard = journal.shard or fault.get("shard")
                journal.mark(
                    "fault_injected",
                    fault["injected_at"],
                    None,
                    f"{fault['action']} {fault['target']}",
                )
        fault_at = journal.moment("fault_injected")
        if provider.get("module") == PROBES_MODULE and func == "recovery_seconds" and fault_at:
            journal.mark("first_acknowledged_write", fault_at + float(run["output"]), fault_at)
    steady_states = raw["steady_states"]
    for run in [*(steady_states.get("before") or {}).get("probes", []),
                *(steady_states.get("after") or {}).get("probes", [])]:  # fmt: skip
        if run.get("status") != "succeeded":
            journal.errors.append(f"{run['activity'].get('name', '?')}: {_failure(run)}")
        elif _provider(run).get("func") == "acknowledged_lost":
            journal.load["lost"] = run["output"]
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
