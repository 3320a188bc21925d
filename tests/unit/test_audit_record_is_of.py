"""`AuditRecord.is_of`: whether an event that arrives with a recorded event's id is that event
again (a retry, a redelivery: decided once) or another one reusing the id (refused)."""

from __future__ import annotations

from typing import Any

import pytest

from detection.events import Event, new_event
from lazarus_lite.audit import AuditRecord


def event_with(data: dict[str, Any]) -> Event:
    return new_event("HealthcheckDown", environment="dev", region="local", service="ratequeue",
                     host="127.0.0.2:7001", source="sensor", data=data)  # fmt: skip


def record_of(event: Event) -> AuditRecord:
    return AuditRecord(event_id=event.id, event=event.model_dump(mode="json"),
                       service=event.service, received_at=0.0, coordinator="node-1")  # fmt: skip


def test_the_same_event_again_is_of_its_record() -> None:
    event = event_with({"ok": True, "lag": 1.5, "seen": [1, 2]})
    assert record_of(event).is_of(Event.model_validate(event.model_dump(mode="json")))


@pytest.mark.parametrize(
    ("first", "then"),
    [(True, 1), (False, 0), (1, True), ([True], [1])],
    ids=["true-1", "false-0", "1-true", "in a list"],
)
def test_a_boolean_and_a_number_that_python_takes_as_equal_are_different_events(
    first: Any, then: Any
) -> None:
    event = event_with({"ok": first})
    other = event.model_copy(update={"data": {"ok": then}})
    assert not record_of(event).is_of(other)
