"""Hypotheses: each turns what a run observed into a verdict with the measured value, so the
journal says not only pass/fail but by how much. Not for: observing (the runner gathers the
`Observations`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.experiments import (
    AcknowledgedLost,
    CompletedByAnotherNode,
    Duplicates,
    Escalated,
    EscalatedThenRemediated,
    FaultedShardAvailability,
    Hypothesis,
    NotRemediated,
    OnePrimaryPerShard,
    OneWorkflowPerIncident,
    OtherShardsAvailability,
    RateLimitsHeld,
    RecoveredWithin,
    RemediatedWhileFaultsLasted,
)
from chaos.journal import HypothesisOutcome
from chaos.ledger import Ledger, RateCheck, describe_failed_calls
from chaos.load import default_rates
from lazarus_lite.audit import AuditRecord
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.topology import Topology


@dataclass
class Observations:
    ledger: Ledger
    shard: str
    faulted_shards: set[str]
    fault_at: float
    recovered_at: float | None
    topology_before: Topology
    topology_after: Topology
    primaries_answering: dict[str, list[str]]
    decisions: list[AuditRecord] = field(default_factory=list)
    workflows: list[WorkflowRecord] = field(default_factory=list)
    # When the last fault was undone; None: not undone (a kill) or still running.
    fault_ended_at: float | None = None
    # When the first fault on the coordination store (an etcd member, the control Redis) was
    # undone: the store may answer again from then on (two of three etcd members make a quorum,
    # whichever comes back first). None: no such fault was undone.
    store_back_at: float | None = None
    # What `recovered_at` is the time of (ack async: an acknowledgement alone can be lost).
    recovered_by: str = "first acknowledged write on the shard"


def _recovered_within(h: RecoveredWithin, o: Observations) -> HypothesisOutcome:
    measured = None if o.recovered_at is None else round(o.recovered_at - o.fault_at, 3)
    return HypothesisOutcome(
        hypothesis="recovered_within",
        ok=measured is not None and measured <= h.seconds,
        expected=f"<= {h.seconds:g} s",
        measured=measured,
        detail=f"fault to {o.recovered_by}"
        if measured is not None
        else f"no {o.recovered_by} after the fault",
    )


def _where_lost(ledger: Ledger, lost: list[str], fault_at: float) -> str:
    """Which shards the undelivered were acknowledged by, when the consumers last received
    anything and how their dequeues failed: what tells a queue that kept them from consumers
    whose dequeues were refused, and those from consumers whose dequeues never arrived."""
    by_shard: dict[str, int] = {}
    for message_id in lost:
        shard = ledger.acknowledged[message_id][1]
        by_shard[shard] = by_shard.get(shard, 0) + 1
    last_ack = max(at for _, _, at in ledger.acknowledged.values())
    last_delivery = max((d.at for d in ledger.deliveries), default=None)
    received = (
        "no delivery at all"
        if last_delivery is None
        else f"last delivery {last_delivery - last_ack:+.1f} s from the last acknowledgement"
    )
    ended = f"; consumers ended on {ledger.consumer_failures}" if ledger.consumer_failures else ""
    failed = describe_failed_calls(ledger.dequeue_failures, fault_at)
    dequeues = f"; dequeues failed: {failed}" if failed else "; no dequeue failed"
    return (
        f"lost by shard {dict(sorted(by_shard.items()))}; {received}{ended}{dequeues}; "
        f"lost ids: {lost[:10]}"
    )


def _acknowledged_lost(h: AcknowledgedLost, o: Observations) -> HypothesisOutcome:
    lost = sorted(o.ledger.lost())
    return HypothesisOutcome(
        hypothesis="acknowledged_lost",
        # Nothing acknowledged proves nothing: the load did not run.
        ok=bool(o.ledger.acknowledged) and len(lost) <= h.max,
        expected=f"<= {h.max} (of > 0 acknowledged)",
        measured=len(lost),
        detail=(
            f"{len(o.ledger.acknowledged)} acknowledged; {_where_lost(o.ledger, lost, o.fault_at)}"
        )
        if lost
        else f"{len(o.ledger.acknowledged)} acknowledged, all delivered",
    )


def _duplicates(h: Duplicates, o: Observations) -> HypothesisOutcome:
    count = o.ledger.duplicates()
    return HypothesisOutcome(
        hypothesis="duplicates",
        ok=bool(o.ledger.deliveries) and count <= h.max,
        expected=f"<= {h.max} (of > 0 deliveries)",
        measured=count,
        detail="deliveries beyond the first of each id",
    )


def _other_shards_availability(h: OtherShardsAvailability, o: Observations) -> HypothesisOutcome:
    measured = {}
    for shard in o.topology_before.shards:
        if shard.id in o.faulted_shards:
            continue
        value = o.ledger.availability(shard.id, since=o.fault_at)
        if value is not None:
            measured[shard.id] = round(value, 4)
    worst = min(measured.values(), default=None)
    return HypothesisOutcome(
        hypothesis="other_shards_availability",
        ok=worst is not None and worst >= h.min,
        expected=f">= {h.min:g}",
        measured=measured,
        detail="share of enqueue attempts acknowledged on the untouched shards after the fault",
    )


def _faulted_shard_availability(h: FaultedShardAvailability, o: Observations) -> HypothesisOutcome:
    until = float("inf") if o.fault_ended_at is None else o.fault_ended_at
    measured = {}
    for shard in sorted(o.faulted_shards):
        value = o.ledger.availability(shard, since=o.fault_at, until=until)
        if value is not None:
            measured[shard] = round(value, 4)
    worst = min(measured.values(), default=None)
    return HypothesisOutcome(
        hypothesis="faulted_shard_availability",
        # No attempt in the window proves nothing: the load did not reach the shard.
        ok=worst is not None and worst >= h.min,
        expected=f">= {h.min:g}",
        measured=measured,
        detail="share of enqueue attempts acknowledged on the faulted shard while the fault "
        + ("lasted" if o.fault_ended_at is not None else "lasted (never rolled back: to the end)"),
    )


def _one_primary_per_shard(h: OnePrimaryPerShard, o: Observations) -> HypothesisOutcome:
    wrong = {s: names for s, names in o.primaries_answering.items() if len(names) != 1}
    return HypothesisOutcome(
        hypothesis="one_primary_per_shard",
        ok=not wrong,
        expected="1 per shard",
        measured=o.primaries_answering,
        detail=f"shards with other than one primary: {wrong}" if wrong else "",
    )


def _worst_early_delivery(o: Observations) -> tuple[RateCheck | None, int]:
    """The number whose delivery came earliest before its rate allowed, and how many numbers
    were checked (each at its default rate)."""
    numbers = sorted({d.number for d in o.ledger.deliveries})
    checks = o.ledger.rate_checks(default_rates(numbers))
    return max(checks, key=lambda c: c.max_early_seconds, default=None), len(checks)


def _rate_limits_held(h: RateLimitsHeld, o: Observations) -> HypothesisOutcome:
    worst, checked = _worst_early_delivery(o)
    early = 0.0 if worst is None else round(worst.max_early_seconds, 4)
    return HypothesisOutcome(
        hypothesis="rate_limits_held",
        ok=bool(checked) and early <= h.tolerance_seconds,
        expected=f"no delivery earlier than its rate allows by > {h.tolerance_seconds:g} s",
        measured=early,
        detail=f"{checked} numbers; worst {worst.number}" if worst else "no deliveries",
    )


def comparable_measures(o: Observations) -> dict[str, Any]:
    """What every run measures whatever hypotheses its experiment has, so that runs of it under
    different failover managers compare on the same figures: the earliest a delivery came before
    its number's rate allowed (s; None: nothing delivered), and the primaries answering per
    shard after the run."""
    worst, _ = _worst_early_delivery(o)
    return {
        "earliest_delivery_before_rate_seconds": None
        if worst is None
        else round(worst.max_early_seconds, 4),
        "primaries_answering": o.primaries_answering,
    }


def _shard_decisions(o: Observations) -> list[AuditRecord]:
    return [
        d
        for d in o.decisions
        if d.event.get("shard") in o.faulted_shards and d.outcome != "duplicate"
    ]


def _escalated(h: Escalated, o: Observations) -> HypothesisOutcome:
    decisions = _shard_decisions(o)
    escalated = [d for d in decisions if d.outcome == "escalated"]
    return HypothesisOutcome(
        hypothesis="escalated",
        ok=bool(escalated) and not any(d.workflow_id for d in decisions),
        expected="the incident escalated to a person, no workflow",
        measured=[f"{d.outcome}: {d.reason}" for d in decisions],
    )


def _not_remediated(h: NotRemediated, o: Observations) -> HypothesisOutcome:
    changed = [
        s.id
        for s in o.topology_after.shards
        if s.primary.name != o.topology_before.shard(s.id).primary.name
    ]
    return HypothesisOutcome(
        hypothesis="not_remediated",
        ok=not changed and not o.workflows,
        expected="no primary changed, no workflow ran",
        measured={"promoted_shards": changed, "workflows": [w.id for w in o.workflows]},
    )


def _completed_by_another_node(h: CompletedByAnotherNode, o: Observations) -> HypothesisOutcome:
    finished = [w for w in o.workflows if w.status == "succeeded" and len(w.nodes) > 1]
    return HypothesisOutcome(
        hypothesis="completed_by_another_node",
        ok=bool(finished),
        expected="a workflow resumed and finished by another node",
        measured=[{"id": w.id, "status": w.status, "nodes": w.nodes} for w in o.workflows],
    )


def _one_workflow_per_incident(h: OneWorkflowPerIncident, o: Observations) -> HypothesisOutcome:
    decisions = _shard_decisions(o)
    started: dict[str, set[str]] = {}
    for decision in decisions:
        if decision.workflow_id:
            started.setdefault(decision.event.get("shard") or "", set()).add(decision.workflow_id)
    twice = {shard: sorted(ids) for shard, ids in started.items() if len(ids) > 1}
    # A workflow whose record could not be read might still be running: not proven ended.
    unfinished = sorted(
        {w.id for w in o.workflows if w.status == "running"}
        | ({i for ids in started.values() for i in ids} - {w.id for w in o.workflows})
    )
    # Handled: its workflow ended, or it was escalated without one (a decision said so).
    handled = all(
        (shard in started) or any(d.outcome == "escalated" for d in decisions
                                  if d.event.get("shard") == shard)
        for shard in o.faulted_shards
    )  # fmt: skip
    return HypothesisOutcome(
        hypothesis="one_workflow_per_incident",
        ok=not twice and not unfinished and handled and bool(o.faulted_shards),
        expected="per faulted shard: one workflow that ended, or an escalation without one",
        measured={
            "workflows": {s: sorted(ids) for s, ids in started.items()},
            "statuses": {w.id: w.status for w in o.workflows},
        },
        detail=(f"started twice: {twice}; " if twice else "")
        + (f"not seen to end: {unfinished}; " if unfinished else "")
        + ("" if handled else "a faulted shard was neither remediated nor escalated"),
    )


def _decided(decision: AuditRecord) -> float:
    return decision.decided_at if decision.decided_at is not None else decision.received_at


def _escalated_then_remediated(h: EscalatedThenRemediated, o: Observations) -> HypothesisOutcome:
    """While the faults lasted (the store away) the incident went to a person and nothing
    acted; after they were undone a workflow remediated it (decided after, wherever its event
    waited meanwhile). The store is back from the first of its faulted nodes undone."""
    decisions = sorted(_shard_decisions(o), key=lambda d: d.received_at)
    ended = o.fault_ended_at
    if ended is not None and o.store_back_at is not None:
        # Acting once the store is back is what the controllers should do, also while the
        # other faulted members are still starting (their ports open some time apart).
        ended = min(ended, o.store_back_at)
    # Each decision counts by when it was made, and a workflow by when it was created (its
    # steps may run before the decision's record is saved, a page acknowledged first): an event
    # received while the store was away may wait for it (the event stream outlives an etcd
    # quorum) and be decided once it is back; `received_at` is the last time it was taken up.
    created = {w.id: w.created_at for w in o.workflows}

    def acted_at(d: AuditRecord) -> float:
        return created.get(d.workflow_id or "") or d.stages.get("workflow_started") or _decided(d)

    during = [] if ended is None else [
        d for d in decisions if o.fault_at <= _decided(d) <= ended
    ]  # fmt: skip
    escalated = [d for d in during if d.outcome == "escalated" and not d.workflow_id]
    acted = [d for d in decisions if d.workflow_id and (ended is None or acted_at(d) < ended)]
    succeeded = {w.id for w in o.workflows if w.status == "succeeded"}
    remediated = [
        d for d in decisions
        if ended is not None and acted_at(d) >= ended and d.workflow_id in succeeded
    ]  # fmt: skip
    problems = [
        *([] if ended is not None else ["the fault was never undone (no 'after' to remediate in)"]),
        *([] if escalated else ["no escalation was recorded while the fault lasted"]),
        *([f"acted while the fault lasted: {[d.workflow_id for d in acted]}"] if acted else []),
        *([] if remediated else ["no workflow succeeded after the fault was undone"]),
    ]
    return HypothesisOutcome(
        hypothesis="escalated_then_remediated",
        ok=not problems,
        expected="while the fault lasted: an escalation and no workflow; after it: a workflow "
        "that succeeded",
        measured={
            "escalated_during": [f"{d.event_id}: {d.reason}" for d in escalated],
            "workflows_during": [d.workflow_id for d in acted],
            "remediated_after": [d.workflow_id for d in remediated],
        },
        detail="; ".join(problems),
    )


def _remediated_while_faults_lasted(
    h: RemediatedWhileFaultsLasted, o: Observations
) -> HypothesisOutcome:
    """A workflow started for a faulted shard's incident succeeded before the last fault was
    undone (a decision's record may be written only after, if the fault held the record log)."""
    ended = o.fault_ended_at
    started = {d.workflow_id for d in _shard_decisions(o) if d.workflow_id}
    succeeded = [w for w in o.workflows if w.id in started and w.status == "succeeded"]
    finished = {w.id: w.finished_at for w in succeeded}
    in_time = sorted(
        i for i, at in finished.items() if ended is not None and at is not None and at < ended
    )
    problems = [
        *([] if ended is not None else ["the fault was never undone (no 'while' to judge)"]),
        *([] if started else ["no workflow was started for a faulted shard"]),
        *([] if in_time or not started else ["no workflow succeeded before the fault ended"]),
    ]
    return HypothesisOutcome(
        hypothesis="remediated_while_faults_lasted",
        ok=not problems,
        expected="a workflow that succeeded before the faults were undone",
        measured={
            "succeeded_before_end": in_time,
            "finished_at": {
                i: round(at - o.fault_at, 2) if at else None for i, at in finished.items()
            },
            "faults_ended_at": round(ended - o.fault_at, 2) if ended is not None else None,
        },
        detail="; ".join(problems),
    )


CHECKERS: dict[type, Callable[[Any, Observations], HypothesisOutcome]] = {
    RecoveredWithin: _recovered_within,
    AcknowledgedLost: _acknowledged_lost,
    Duplicates: _duplicates,
    OtherShardsAvailability: _other_shards_availability,
    FaultedShardAvailability: _faulted_shard_availability,
    OnePrimaryPerShard: _one_primary_per_shard,
    RateLimitsHeld: _rate_limits_held,
    Escalated: _escalated,
    NotRemediated: _not_remediated,
    CompletedByAnotherNode: _completed_by_another_node,
    OneWorkflowPerIncident: _one_workflow_per_incident,
    EscalatedThenRemediated: _escalated_then_remediated,
    RemediatedWhileFaultsLasted: _remediated_while_faults_lasted,
}


# Hypotheses about what the Lazarus controllers decided and ran: under Sentinel there is no
# decision, audit record or workflow to judge.
LAZARUS_ONLY: dict[type, str] = {
    Escalated: "an escalation is a Lazarus decision",
    CompletedByAnotherNode: "workflows are run by the Lazarus controllers",
    OneWorkflowPerIncident: "workflows are run by the Lazarus controllers",
    EscalatedThenRemediated: "escalations and workflows are Lazarus decisions",
    RemediatedWhileFaultsLasted: "workflows are run by the Lazarus controllers",
}


def evaluate(
    hypotheses: list[Hypothesis], observations: Observations, failover: str = "lazarus"
) -> list[HypothesisOutcome]:
    """Each hypothesis judged; under `failover` sentinel the Lazarus-only ones are skipped
    with the reason (reported as skipped, never as passed)."""
    return [
        skipped(h.type, f"{LAZARUS_ONLY[type(h)]}; failover is sentinel")
        if failover == "sentinel" and type(h) in LAZARUS_ONLY
        else CHECKERS[type(h)](h, observations)
        for h in hypotheses
    ]


def skipped(hypothesis: str, reason: str) -> HypothesisOutcome:
    return HypothesisOutcome(
        hypothesis=hypothesis, ok=False, expected="(not judged)", measured=None, skipped=reason
    )


def verdict_ok(outcomes: list[HypothesisOutcome]) -> bool:
    """Every judged hypothesis held, and at least one was judged (all skipped proves nothing)."""
    judged = [o for o in outcomes if o.judged]
    return bool(judged) and all(o.ok for o in judged)
