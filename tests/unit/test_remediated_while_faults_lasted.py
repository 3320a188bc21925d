"""The `remediated_while_faults_lasted` hypothesis (on etcd, the event stream's Redis killed,
then a primary): a workflow decided for the faulted shard succeeded before the faults were
undone.

Not for: how a run gathers its decisions (chaos.runner), or the scenario itself
(tests/test_scenarios.py runs it on the testbed).
"""

from __future__ import annotations

from chaos.experiments import RemediatedWhileFaultsLasted
from chaos.hypotheses import evaluate
from chaos.journal import HypothesisOutcome
from lazarus_lite.audit import AuditRecord
from lazarus_lite.workflow.records import WorkflowRecord
from tests.unit.store_fault_observations import observed

FAULT_AT, FAULTS_UNDONE_AT = 100.0, 130.0


def decision(
    workflow_id: str | None, shard: str = "s1", outcome: str = "remediated"
) -> AuditRecord:
    return AuditRecord(event_id=f"e-{workflow_id}-{shard}", event={"shard": shard},
                       service="ratequeue", received_at=110.0, coordinator="n1",
                       outcome=outcome, workflow_id=workflow_id)  # type: ignore[arg-type]  # fmt: skip


def workflow(workflow_id: str, status: str, finished_at: float | None) -> WorkflowRecord:
    # Only the id, the status and when it finished are judged: the rest is left out.
    return WorkflowRecord.model_construct(id=workflow_id, status=status, finished_at=finished_at)


def judged(
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    *,
    ended: float | None = FAULTS_UNDONE_AT,
) -> HypothesisOutcome:
    observations = observed(decisions, workflows, fault_at=FAULT_AT, ended=ended)
    hypothesis = RemediatedWhileFaultsLasted(type="remediated_while_faults_lasted")
    [outcome] = evaluate([hypothesis], observations)
    return outcome


def test_a_workflow_that_succeeded_before_the_faults_were_undone_passes() -> None:
    outcome = judged([decision("wf-1")], [workflow("wf-1", "succeeded", 115.0)])
    assert outcome.ok, outcome
    assert outcome.measured["succeeded_before_end"] == ["wf-1"]


def test_a_workflow_that_succeeded_only_after_the_faults_were_undone_fails() -> None:
    outcome = judged([decision("wf-1")], [workflow("wf-1", "succeeded", 131.0)])
    assert not outcome.ok
    assert "no workflow succeeded before the fault ended" in outcome.detail


def test_a_workflow_that_escalated_in_time_fails() -> None:
    outcome = judged(
        [decision("wf-1", outcome="escalated")], [workflow("wf-1", "escalated", 115.0)]
    )
    assert not outcome.ok


def test_no_workflow_for_the_faulted_shard_fails_even_if_another_shard_was_remediated() -> None:
    outcome = judged([decision("wf-2", shard="s2")], [workflow("wf-2", "succeeded", 115.0)])
    assert not outcome.ok
    assert "no workflow was started for a faulted shard" in outcome.detail


def test_faults_never_undone_leave_nothing_to_judge_and_fail() -> None:
    outcome = judged([decision("wf-1")], [workflow("wf-1", "succeeded", 115.0)], ended=None)
    assert not outcome.ok
    assert "never undone" in outcome.detail
