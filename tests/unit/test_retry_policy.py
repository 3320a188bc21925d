"""One retry policy: its waits, its bounds, and its stored form (workflow records carry it)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.retry import RetryPolicy
from notifications.delivery import DeliveryPolicy
from ratequeue.client import ClientRetryPolicy


def test_waits_grow_by_the_factor_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=0.25, factor=2, max_backoff=1.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 1.0]


def test_a_policy_without_a_cap_is_stored_as_workflow_records_always_stored_it() -> None:
    """Records written by older controllers carry no `max_backoff`; nor do new ones without a
    cap, so an older node reads every record a newer one writes."""
    assert RetryPolicy(max_attempts=3).model_dump_json() == (
        '{"max_attempts":3,"backoff":0.2,"factor":2.0}'
    )


def test_the_clients_waits_are_jittered_below_the_policys_delay() -> None:
    policy = ClientRetryPolicy(backoff=0.04, max_backoff=0.1)
    assert all(0 <= policy.delay(3) <= 0.1 for _ in range(200))


@pytest.mark.parametrize(
    "bad", [{"max_attempts": 0}, {"backoff": -1}, {"max_backoff": -1}, {"deadline": -1}]
)
def test_the_clients_policy_keeps_the_bounds(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ClientRetryPolicy(**bad)


def test_a_delivery_attempt_has_a_timeout_of_its_own() -> None:
    assert DeliveryPolicy().timeout == 3.0 and DeliveryPolicy().delay(5) == 2.0
