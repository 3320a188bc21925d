"""Placing what the controllers did on a run's timeline (the first sensor event, the decision,
the promotion, the topology published, the first acknowledged write after the fault), or, under
Sentinel, the promotion the map shows, the API following it, and the first write sent after that),
and telling when the expected outcome is reached.
Not for: reading the controllers (see `controller_answers`).
"""

from __future__ import annotations

import time
from datetime import datetime

from pydantic import ValidationError

from chaos.journal import Journal
from chaos.ledger import Ledger
from chaos.load import BackgroundLoad
from chaos.sentinel_switch_marks import SentinelAnnouncements
from lazarus_lite.audit import AuditRecord
from lazarus_lite.steps.ratequeue_promotion import (
    PROMOTE_CANDIDATE,
    PUBLISH_TOPOLOGY,
    CandidatePromoted,
    TopologyPublished,
)
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.topology import Topology

# Timeline marks of the Ratequeue failover's steps: (step, its output model, the mark's name).
STEP_MARKS: tuple[tuple[str, type[CandidatePromoted] | type[TopologyPublished], str], ...] = (
    (PROMOTE_CANDIDATE, CandidatePromoted, "promotion"),
    (PUBLISH_TOPOLOGY, TopologyPublished, "topology_published"),
)

# What recovery is measured to, by the journal's recovery mark (`Journal.recovery_mark`).
RECOVERED_BY = {
    "first_acknowledged_write": "first acknowledged write on the shard",
    "first_write_after_switch": "first write acknowledged on the shard that was sent after the "
    "API routed to the promoted primary (ack async: the cut-off primary's acknowledgements are "
    "discarded)",
}


def update_timeline(
    journal: Journal,
    load: BackgroundLoad,
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    watched: set[str],
    fault_at: float,
) -> None:
    """Mark on the journal what happened since the fault; `watched` are the shards whose
    recovery counts (the ones whose primary was hit, else every faulted one)."""
    downs = [d for d in decisions if d.event["type"] == "RedisMasterDown"]
    if downs:
        first = min(datetime.fromisoformat(d.event["occurred_at"]).timestamp() for d in downs)
        journal.mark("first_sensor_event", first, fault_at, downs[0].event["source"])
    final = [d for d in decisions if d.outcome not in ("received", "duplicate")]
    if final and final[0].decided_at:
        journal.mark(
            "decision", final[0].decided_at, fault_at, f"{final[0].outcome}: {final[0].reason}"
        )
    for workflow in workflows:
        for step, model, name in STEP_MARKS:
            record = workflow.steps.get(step)
            if record is not None and record.finished_at:
                journal.mark(name, record.finished_at, fault_at, _promoted(record.output, model))
    # Recovered: every watched shard has acknowledged a write again (the slowest one counts; a
    # shard that only lost a replica never stopped).
    acks = {shard: load.ledger.first_ack_after(fault_at, shard) for shard in sorted(watched)}
    if acks and all(at is not None for at in acks.values()):
        slowest = max(acks, key=lambda shard: acks[shard] or 0.0)
        journal.mark("first_acknowledged_write", acks[slowest], fault_at, slowest)


def mark_write_after_switch(
    journal: Journal, ledger: Ledger, watched: set[str], fault_at: float
) -> None:
    """Once the API routes to the promoted primaries (`topology_published`): when every watched
    shard acknowledged a write sent after that, the slowest one counting."""
    switched_at = journal.moment("topology_published")
    if switched_at is None:
        return
    acks = {shard: ledger.first_ack_after(switched_at, shard) for shard in sorted(watched)}
    if acks and all(at is not None for at in acks.values()):
        slowest = max(acks, key=lambda shard: acks[shard] or 0.0)
        journal.mark("first_write_after_switch", acks[slowest] or 0.0, fault_at, slowest)


def _promoted(
    output: dict[str, object], model: type[CandidatePromoted] | type[TopologyPublished]
) -> str:
    """The primary a step's output names; "" for a failed attempt (a finish time, no output).
    An output of another version's shape still places the mark on the timeline."""
    if not output:
        return ""
    try:
        return model.model_validate(output).primary
    except ValidationError:
        return str(output.get("primary", ""))


def mark_sentinel_switch(
    journal: Journal,
    before: Topology,
    now: Topology,
    watched: set[str],
    fault_at: float,
    mark: str = "promotion",
    *,
    announcements: SentinelAnnouncements | None = None,
    taken_at: float | None = None,
) -> None:
    """Under Sentinel there is no workflow to read: the promotion is seen when every watched
    shard's primary in the map Sentinel's majority names (`now`) is another node than before;
    with `mark` topology_published, when the API's own map (`now`) names them, so the API is
    seen to follow.

    The mark is placed at the moment it happened when that is known, else when the run's poll
    saw it (the slowest shard counting): the promotion at the sentinels' first announcement that
    each shard's primary is the node the majority names (`announcements`), the API's switch when
    it took the map it answered with (`taken_at`, its `Ratequeue-Epoch-Taken-At`). The detail
    names the source and how much later the poll saw it, so every run measures what polling
    alone would have added."""
    switched = {s: now.shard(s).primary for s in watched
                if now.shard(s).primary.name != before.shard(s).primary.name}  # fmt: skip
    if not watched or len(switched) < len(watched):
        return
    seen = time.time()
    at, source = seen, "the run's poll"
    if announcements is not None:
        heard = [announcements.first_naming(s, node, fault_at) for s, node in switched.items()]
        if all(a is not None for a in heard):
            last = max((a for a in heard if a is not None), key=lambda a: a.at)
            if last.at < seen:
                at, source = last.at, f"{last.event} from sentinel {last.sentinel}"
    if taken_at is not None:
        at, source = _api_switch(journal, now.epoch, taken_at, fault_at, seen, (at, source))
    if at < seen:
        source += f"; the run's poll saw it {seen - at:.3f} s later"
    detail = ", ".join(f"{shard}: {node.name}" for shard, node in sorted(switched.items()))
    journal.mark(mark, at, fault_at, f"{detail} ({source})")


def _api_switch(
    journal: Journal,
    epoch: int,
    taken_at: float,
    fault_at: float,
    seen: float,
    otherwise: tuple[float, str],
) -> tuple[float, str]:
    """When the API switched: `taken_at` is the API host's clock, trusted only where it can
    be (after the fault and the promotion, before the run saw the switch); outside that a
    clock off the runner's would move the API's switch, and with it the first write counted
    after it, to where the cut-off primary still acknowledged; `otherwise` then stands."""
    promoted = journal.moment("promotion")
    earliest = max(fault_at, promoted) if promoted is not None else fault_at
    if earliest <= taken_at < seen:
        return taken_at, f"the API took epoch {epoch}"
    when, source = otherwise
    if taken_at >= seen:
        why = f"{taken_at - seen:.3f} s after the run saw it"
    elif taken_at < fault_at:
        why = f"{fault_at - taken_at:.3f} s before the fault"
    else:
        why = f"{earliest - taken_at:.3f} s before the promotion"
    return when, f"{source}: the API's Ratequeue-Epoch-Taken-At, {why}, not used"


def outcome_reached(
    expect: str,
    journal: Journal,
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    faulted: set[str],
    failover: str = "lazarus",
) -> bool:
    if expect == "remediation" and failover == "sentinel":
        # Sentinel promoted, and the API routes there (with async acks the first acknowledged
        # write may be the cut-off primary's: it says nothing of the switch).
        marks = ("promotion", "topology_published", "first_acknowledged_write")
        return all(journal.moment(mark) is not None for mark in marks)
    if expect == "remediation":
        done = [w for w in workflows if w.status != "running"]
        return bool(done) and journal.moment("first_acknowledged_write") is not None
    if expect == "escalation":
        final = {
            d.event.get("shard") for d in decisions if d.outcome not in ("received", "duplicate")
        }
        return faulted <= final
    return False  # "nothing": watch the whole time
