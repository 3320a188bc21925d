"""What a run on shard s1 observed, for the hypotheses that judge store faults by the decisions
and workflows alone (the ledger and topologies are left empty)."""

from __future__ import annotations

from chaos.hypotheses import Observations
from chaos.ledger import Ledger
from lazarus_lite.audit import AuditRecord
from lazarus_lite.workflow.records import WorkflowRecord


def observed(
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    *,
    fault_at: float,
    ended: float | None,
    store_back: float | None = None,
) -> Observations:
    return Observations(
        ledger=Ledger(), shard="s1", faulted_shards={"s1"}, fault_at=fault_at, recovered_at=None,
        topology_before=None, topology_after=None,  # type: ignore[arg-type]
        primaries_answering={}, decisions=decisions, workflows=workflows, fault_ended_at=ended,
        store_back_at=store_back,
    )  # fmt: skip
