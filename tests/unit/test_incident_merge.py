"""Which later report of an incident is merged into the decision holding its claim, and which is
decided on its own (`lazarus_lite.incidents.merge_verdict`): a refusal absorbs nothing."""

from __future__ import annotations

import pytest

from lazarus_lite.audit import AuditRecord
from lazarus_lite.incidents import merge_verdict

NOW = 1_000_000.0
RETRY_AFTER = 20.0


def decision(outcome: str, *, workflow_id: str | None = None, ago: float = 1.0) -> AuditRecord:
    return AuditRecord(
        event_id="first",
        event={},
        service="ratequeue",
        received_at=NOW - ago - 1,
        coordinator="n1",
        outcome=outcome,  # type: ignore[arg-type]
        workflow_id=workflow_id,
        decided_at=None if outcome == "received" else NOW - ago,
    )


def test_a_report_waits_for_a_decision_still_being_made() -> None:
    assert merge_verdict(decision("received"), NOW, RETRY_AFTER) == "wait"


@pytest.mark.parametrize("outcome", ["escalated", "no_action"])
def test_a_report_after_a_refusal_is_decided_on_its_own_at_once(outcome: str) -> None:
    assert merge_verdict(decision(outcome, ago=0.1), NOW, RETRY_AFTER) == "decide_afresh"


@pytest.mark.parametrize("outcome", ["scheduled", "remediated"])
def test_a_report_of_an_incident_being_remediated_is_its_duplicate(outcome: str) -> None:
    acted = decision(outcome, workflow_id="wf-1", ago=RETRY_AFTER * 10)
    assert merge_verdict(acted, NOW, RETRY_AFTER) == "merge"


def test_a_report_soon_after_a_failed_workflow_is_its_duplicate() -> None:
    failed = decision("escalated", workflow_id="wf-1", ago=RETRY_AFTER / 2)
    assert merge_verdict(failed, NOW, RETRY_AFTER) == "merge"


def test_a_report_well_after_a_failed_workflow_is_decided_afresh() -> None:
    failed = decision("escalated", workflow_id="wf-1", ago=RETRY_AFTER)
    assert merge_verdict(failed, NOW, RETRY_AFTER) == "decide_afresh"


def test_a_report_soon_after_a_long_workflow_failed_is_its_duplicate() -> None:
    failed = decision("escalated", workflow_id="wf-1", ago=RETRY_AFTER * 3)
    failed.workflow_ended_at = NOW - RETRY_AFTER / 2  # ran for 2.5 x the delay, then failed
    assert merge_verdict(failed, NOW, RETRY_AFTER) == "merge"


def test_a_repeated_recovery_is_a_duplicate_of_its_record() -> None:
    assert merge_verdict(decision("recorded"), NOW, RETRY_AFTER) == "merge"


def test_a_claim_whose_decision_record_cannot_be_read_is_waited_on_not_merged_into() -> None:
    # Held in its node's memory while the record log is away, or never written: records outlive
    # claims by weeks, so this is no expired decision, and merging could swallow a failure.
    assert merge_verdict(None, NOW, RETRY_AFTER) == "wait"
