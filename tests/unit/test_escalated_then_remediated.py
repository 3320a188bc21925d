"""The `escalated_then_remediated` hypothesis (the control store killed, or etcd's quorum lost,
then a primary): while the fault lasted (from the first fault to the store's return) the
faulted shard's incident went to a person and no workflow was decided; after it, a workflow
remediated it.

Not for: how a run gathers its decisions (chaos.runner), or the scenario itself
(tests/test_scenarios.py runs it on the testbed).
"""

from __future__ import annotations

import pytest

from chaos.experiments import EscalatedThenRemediated
from chaos.hypotheses import evaluate
from chaos.journal import HypothesisOutcome
from chaos.runner import store_back_at
from lazarus_lite.audit import AuditRecord
from lazarus_lite.workflow.records import WorkflowRecord
from tests.unit.store_fault_observations import observed

FAULT_AT, STORE_BACK_AT = 100.0, 108.0


def decision(
    at: float,
    outcome: str,
    workflow_id: str | None = None,
    shard: str = "s1",
    decided_at: float | None = None,
) -> AuditRecord:
    """Received at `at`; decided then too, unless `decided_at` says later."""
    return AuditRecord(event_id=f"e{at}", event={"shard": shard}, service="ratequeue",
                       received_at=at, coordinator="n1", outcome=outcome,  # type: ignore[arg-type]
                       workflow_id=workflow_id, decided_at=decided_at or at)  # fmt: skip


def workflow(workflow_id: str, status: str, created_at: float | None = None) -> WorkflowRecord:
    # Only the id, the status and when it was created are judged: the rest is left out.
    return WorkflowRecord.model_construct(id=workflow_id, status=status, created_at=created_at)


def judged(
    decisions: list[AuditRecord],
    workflows: list[WorkflowRecord],
    *,
    ended: float | None = STORE_BACK_AT,
    store_back: float | None = None,
) -> HypothesisOutcome:
    observations = observed(
        decisions, workflows, fault_at=FAULT_AT, ended=ended, store_back=store_back
    )
    [outcome] = evaluate([EscalatedThenRemediated(type="escalated_then_remediated")], observations)
    return outcome


def test_an_escalation_while_the_store_was_away_then_a_remediation_after_passes() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(109.0, "remediated", "wf-1")],
        [workflow("wf-1", "succeeded")],
    )
    assert outcome.ok, outcome.detail


SUCCEEDED = [workflow("wf-1", "succeeded")]


def test_an_event_received_while_the_store_was_away_and_decided_after_it_is_a_remediation() -> None:
    # On etcd the event stream outlives the lost quorum: the event waits, and is decided once
    # the quorum is back.
    outcome = judged(
        [decision(104.0, "escalated"), decision(106.0, "remediated", "wf-1", decided_at=109.0)],
        SUCCEEDED,
    )
    assert outcome.ok, outcome.detail


@pytest.mark.parametrize(
    ("decisions", "workflows", "ended", "problem"),
    [
        pytest.param([decision(108.5, "escalated"), decision(109.0, "remediated", "wf-1")],
                     SUCCEEDED, STORE_BACK_AT, "no escalation was recorded while the fault lasted",
                     id="escalated-only-after-the-store-returned"),
        pytest.param([decision(104.0, "escalated", shard="s0"),
                      decision(109.0, "remediated", "wf-1")],
                     SUCCEEDED, STORE_BACK_AT, "no escalation was recorded while the fault lasted",
                     id="escalated-about-another-shard"),
        pytest.param([decision(104.0, "escalated"), decision(105.0, "remediated", "wf-1")],
                     SUCCEEDED, STORE_BACK_AT, "acted while the fault lasted",
                     id="a-workflow-started-while-the-store-was-away"),
        pytest.param([decision(104.0, "escalated"),
                      decision(101.0, "remediated", "wf-1", decided_at=107.0)],
                     SUCCEEDED, STORE_BACK_AT, "acted while the fault lasted",
                     id="a-workflow-decided-while-the-store-was-away-of-an-event-received-before"),
        pytest.param([decision(104.0, "escalated"),
                      decision(106.0, "remediated", "wf-1", decided_at=110.0)],
                     [workflow("wf-1", "succeeded", created_at=107.5)], STORE_BACK_AT,
                     "acted while the fault lasted",
                     id="a-workflow-created-while-the-store-was-away-its-decision-saved-after"),
        pytest.param([decision(104.0, "escalated", decided_at=109.0),
                      decision(109.5, "remediated", "wf-1")],
                     SUCCEEDED, STORE_BACK_AT, "no escalation was recorded while the fault lasted",
                     id="an-event-received-while-away-escalated-only-after-the-store-returned"),
        pytest.param([decision(104.0, "escalated"), decision(109.0, "escalated", "wf-1")],
                     [workflow("wf-1", "escalated")], STORE_BACK_AT, "no workflow succeeded",
                     id="no-success-after-the-store-returned"),
        pytest.param([decision(104.0, "escalated"), decision(109.0, "remediated", "wf-1")],
                     SUCCEEDED, None, "never undone", id="the-fault-never-undone"),
    ],
)  # fmt: skip
def test_it_fails_naming_what_was_missing(
    decisions: list[AuditRecord], workflows: list[WorkflowRecord], ended: float | None,
    problem: str,
) -> None:  # fmt: skip
    outcome = judged(decisions, workflows, ended=ended)
    assert not outcome.ok and problem in outcome.detail


# etcd's quorum lost by killing two of three members: it is back with the first restarted
# member (at 106), while the other's port may open later (the faults end at 108).
FIRST_MEMBER_BACK_AT = 106.0


def test_a_workflow_started_once_the_first_store_member_was_back_is_a_remediation() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(107.0, "remediated", "wf-1")],
        SUCCEEDED,
        store_back=FIRST_MEMBER_BACK_AT,
    )
    assert outcome.ok, outcome.detail


def test_a_workflow_started_before_any_store_member_was_back_still_fails() -> None:
    outcome = judged(
        [decision(104.0, "escalated"), decision(105.0, "remediated", "wf-1")],
        SUCCEEDED,
        store_back=FIRST_MEMBER_BACK_AT,
    )
    assert not outcome.ok and "acted while the fault lasted" in outcome.detail


def test_the_store_is_back_when_its_first_faulted_node_was_undone() -> None:
    faults = [
        {"role": "primary", "rolled_back_at": 101.0},
        {"role": "etcd", "rolled_back_at": 108.0},
        {"role": "etcd", "rolled_back_at": 106.5},
        {"role": "etcd", "rolled_back_at": None},
    ]
    assert store_back_at(faults) == 106.5
    assert store_back_at([{"role": "control", "rolled_back_at": 103.0}]) == 103.0
    assert store_back_at([{"role": "primary", "rolled_back_at": 101.0}]) is None
