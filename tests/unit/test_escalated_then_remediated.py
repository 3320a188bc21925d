"""The `escalated_then_remediated` hypothesis (the control store killed, then a primary): while
the fault lasted (from the first fault to the store's return) the faulted shard's incident went
to a person and no workflow started; after it, a workflow remediated it.

Not for: how a run gathers its decisions (chaos.runner), or the scenario itself
(tests/test_scenarios.py runs it on the testbed).
"""

from __future__ import annotations

from chaos.experiments import EscalatedThenRemediated
from chaos.hypotheses import Observations, evaluate
from chaos.journal import HypothesisOutcome
from chaos.ledger import Ledger
from lazarus_lite.audit import AuditRecord
from lazarus_lite.workflow.records import WorkflowRecord

FAULT_AT, STORE_BACK_AT = 100.0, 108.0


def decision(
    at: float, outcome: str, workflow_id: str | None = None, shard: str = "s1"
) -> AuditRecord:
    return AuditRecord(event_id=f"e{at}", event={"shard": shard}, service="ratequeue",
                       received_at=at, coordinator="n1", outcome=outcome,  # type: ignore[arg-type]
                       workflow_id=workflow_id)  # fmt: skip


def workflow(workflow_id: str, status: str) -> WorkflowRecord:
    # Only the id and the status are judged: the rest of a record is left out.
    return WorkflowRecord.model_construct(id=workflow_id, status=status)


def judged(
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    *,
    ended: float | None = STORE_BACK_AT,
) -> HypothesisOutcome:
    observations = Observations(
        ledger=Ledger(), shard="s1", faulted_shards={"s1"}, fault_at=FAULT_AT, recovered_at=None,
        topology_before=None, topology_after=None,  # type: ignore[arg-type]
        primaries_answering={}, decisions=decisions, workflows=workflows, fault_ended_at=ended,
    )  # fmt: skip
    [outcome] = evaluate([EscalatedThenRemediated(type="escalated_then_remediated")], observations)
    return outcome


def test_an_escalation_while_the_store_was_away_then_a_remediation_after_passes() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(109.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
    )
    assert outcome.ok, outcome.detail


def test_an_escalation_recorded_only_after_the_store_returned_fails() -> None:
    outcome = judged(
        [decision(108.5, "escalated"), decision(109.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
    )
    assert not outcome.ok and "no escalation was recorded while the fault lasted" in outcome.detail


def test_an_escalation_about_another_shard_does_not_count() -> None:
    outcome = judged(
        [decision(104.0, "escalated", shard="s0"), decision(109.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
    )
    assert not outcome.ok


def test_a_workflow_started_while_the_store_was_away_fails() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(105.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
    )
    assert not outcome.ok and "acted while the fault lasted" in outcome.detail


def test_no_successful_workflow_after_the_store_returned_fails() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(109.0, "escalated", "wf-1")],
        [workflow("wf-1", "escalated")],
    )
    assert not outcome.ok and "no workflow succeeded" in outcome.detail


def test_a_fault_never_undone_fails() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(109.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
        ended=None,
    )
    assert not outcome.ok and "never undone" in outcome.detail
