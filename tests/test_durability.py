"""The durable-enqueue rule: acknowledged only once WAIT confirms min_replicas."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from redis.exceptions import NoPermissionError

from ratequeue.client import ClientRetryPolicy, RatequeueClient
from ratequeue.errors import DurabilityNotMet, ShardUnavailable
from ratequeue.local_cluster import LocalCluster, ShardNode, wait_for_replicas_in_sync
from ratequeue.scripts import held_ids

NUMBER = "+14155550100"
# One attempt: a paused replica is still counted by the primary for a second or more
# (`membership.REPLICA_MAX_LAG_SECONDS`), so within it only WAIT tells it is not there.
ONE_ATTEMPT = ClientRetryPolicy(max_attempts=1, deadline=0)


@contextmanager
def paused(node: ShardNode) -> Iterator[None]:
    os.kill(node.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.pid, signal.SIGCONT)


@pytest.fixture
def single(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return start_cluster(shards=1, replicas=1)


def test_with_its_only_replica_gone_an_enqueue_is_refused_and_nothing_is_written(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single)
    single.shards[0].replicas[0].stop()
    with pytest.raises(ShardUnavailable, match="NOREPLICAS"):
        client.enqueue(NUMBER, "hello", "m-1")
    with single.shards[0].primary.client() as conn:
        assert held_ids(conn, NUMBER) == set()


def test_with_its_only_replica_not_acknowledging_an_enqueue_is_not_acknowledged(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single, retry=ONE_ATTEMPT)
    with paused(single.shards[0].replicas[0]), pytest.raises(DurabilityNotMet, match="0 of 1"):
        client.enqueue(NUMBER, "hello", "m-1")


def test_the_api_answers_503_with_retry_after_when_no_replica_follows(
    single: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(single)
    single.shards[0].replicas[0].stop()
    response = httpx.post(f"{api.url}/v1/numbers/{NUMBER}/messages",
                          json={"id": "m-1", "body": "hello"}, timeout=10)  # fmt: skip
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "shard_unavailable"


def test_a_retry_with_the_same_id_is_acknowledged_once_a_replica_is_back_and_queued_once(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single, retry=ONE_ATTEMPT)
    shard = single.shards[0]
    with paused(shard.replicas[0]), pytest.raises(DurabilityNotMet):
        client.enqueue(NUMBER, "hello", "m-1")  # written on the primary, not acknowledged
    wait_for_replicas_in_sync(shard.primary, shard.replicas)
    assert client.enqueue(NUMBER, "hello", "m-1").duplicate
    assert client.number_info(NUMBER).depth == 1


def test_a_refused_enqueue_without_an_id_names_the_id_made_up_and_a_retry_with_it_queues_once(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single, retry=ONE_ATTEMPT)
    shard = single.shards[0]
    with paused(shard.replicas[0]), pytest.raises(DurabilityNotMet) as refused:
        client.enqueue(NUMBER, "hello")
    assert refused.value.message_id is not None
    wait_for_replicas_in_sync(shard.primary, shard.replicas)
    assert client.enqueue(NUMBER, "hello", refused.value.message_id).duplicate
    assert client.number_info(NUMBER).depth == 1


def test_a_redis_error_after_the_write_names_the_id_made_up_and_a_retry_with_it_queues_once(
    single: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(single, retry=ONE_ATTEMPT)
    client.enqueue(NUMBER, "warm", "warm")  # scripts loaded: only WAIT is refused below
    with single.shards[0].primary.client() as conn:
        conn.execute_command("ACL", "SETUSER", "default", "-wait")  # the script runs, WAIT fails
        try:
            with pytest.raises(NoPermissionError) as refused:
                client.enqueue(NUMBER, "hello")
        finally:
            conn.execute_command("ACL", "SETUSER", "default", "+wait")
    message_id = refused.value.message_id  # type: ignore[attr-defined]
    assert client.enqueue(NUMBER, "hello", message_id).duplicate
    assert client.number_info(NUMBER).depth == 2


def test_with_min_replicas_zero_no_replica_is_needed(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1, min_replicas=0)
    client = make_client(cluster, min_replicas=0)
    cluster.shards[0].replicas[0].stop()
    assert client.enqueue(NUMBER, "hello", "m-1").duplicate is False
