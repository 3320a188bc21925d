"""The durable-enqueue rule: acknowledged only once WAIT confirms min_replicas."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from ratequeue.client import RatequeueClient
from ratequeue.errors import DurabilityNotMet
from ratequeue.redis_processes import LocalCluster, wait_for_replicas_in_sync

NUMBER = "+14155550100"


@pytest.fixture
def single(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return start_cluster(shards=1, replicas=1)


def test_with_its_only_replica_stopped_an_enqueue_is_not_acknowledged(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single)
    single.shards[0].replicas[0].stop()
    with pytest.raises(DurabilityNotMet, match="0 of 1"):
        client.enqueue(NUMBER, "hello", "m-1")


def test_the_api_answers_503_with_retry_after_when_durability_is_not_met(
    single: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(single)
    single.shards[0].replicas[0].stop()
    response = httpx.post(f"{api.url}/v1/numbers/{NUMBER}/messages",
                          json={"id": "m-1", "body": "hello"}, timeout=10)  # fmt: skip
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "durability_not_met"


def test_a_retry_with_the_same_id_is_acknowledged_once_a_replica_is_back_and_queued_once(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single)
    shard = single.shards[0]
    shard.replicas[0].stop()
    with pytest.raises(DurabilityNotMet):
        client.enqueue(NUMBER, "hello", "m-1")
    shard.replicas[0].restart(replica_of=shard.primary)
    wait_for_replicas_in_sync(shard.primary, shard.replicas)
    assert client.enqueue(NUMBER, "hello", "m-1").id == "m-1"
    assert client.number_info(NUMBER).depth == 1


def test_with_min_replicas_zero_no_replica_is_needed(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single, min_replicas=0)
    single.shards[0].replicas[0].stop()
    assert client.enqueue(NUMBER, "hello", "m-1").duplicate is False
