"""Enqueues of different shards do not share a fate, over real redis-server shards: a shard
whose primary stalls holds only its own requests in the API's group commit, and an error of one
shard's batch is the answer of that shard's messages only."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from redis.exceptions import NoPermissionError

from common.etcd_client import EtcdClient, EtcdClientSettings
from ratequeue import coalescing
from ratequeue.client import AsyncRatequeueClient, ClientSettings, Enqueued, RatequeueClient
from ratequeue.errors import InvalidInput
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.local_cluster import LocalCluster
from ratequeue.scripts import held_ids
from tests.conftest import MapOnSuiteControl, ServedApi
from tests.test_http_api import ON_S0, ON_S1, enqueue, messages_url


def test_a_stalled_shard_holds_its_own_enqueues_while_another_shard_answers_at_once(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster, retry_deadline=3)
    stalled = cluster.shard("s0").primary
    with httpx.Client(base_url=api.url, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        stalled.signal(signal.SIGSTOP)
        try:
            # More than the batches a shard may have in flight, every one held by the stall.
            held = [pool.submit(http.post, messages_url(ON_S0), json={"id": f"s0-{i}", "body": 1})
                    for i in range(coalescing.MAX_IN_FLIGHT + 1)]  # fmt: skip
            time.sleep(0.5)  # let them reach the API before the other shard's request
            assert enqueue(http, ON_S1, "not held", "s1-1")["shard"] == "s1"
            assert not any(request.done() for request in held)
        finally:
            stalled.signal(signal.SIGCONT)
        assert all(request.result().status_code in (201, 503) for request in held)


def test_an_error_of_one_shard_s_batch_answers_only_that_shard_s_messages(
    cluster: LocalCluster, client: RatequeueClient
) -> None:
    messages = [client.prepare(ON_S0, "stored", "on-s0"), client.prepare(ON_S1, "refused", "on-s1")]
    with cluster.shard("s1").primary.client() as conn:
        conn.execute_command("ACL", "SETUSER", "default", "-evalsha")  # s1 refuses every script
        try:
            stored, refused = client.enqueue_many(messages)
        finally:
            conn.execute_command("ACL", "SETUSER", "default", "+evalsha")

    assert stored == Enqueued(id="on-s0", number=ON_S0, shard="s0", duplicate=False)
    assert isinstance(refused, NoPermissionError)
    assert client.dequeue(10, 30)[0].id == "on-s0"


def test_a_message_no_batch_line_can_carry_is_refused_alone_in_a_group_commit_of_other_callers(
    cluster: LocalCluster, map_on_suite_control: MapOnSuiteControl
) -> None:
    endpoints = map_on_suite_control(cluster)

    async def enqueue_together() -> list[Enqueued | Exception]:
        settings = ClientSettings(wait_timeout_ms=300, refresh_interval=0.5)
        etcd = (
            None
            if endpoints is None
            else EtcdClient(EtcdClientSettings(endpoints=endpoints.split(",")))
        )
        topology = None if etcd is None else EtcdTopologyStore(etcd)
        try:
            async with AsyncRatequeueClient(
                cluster.control.url, settings, topology=topology
            ) as client:
                group = coalescing.EnqueueCoalescer(client)
                good = [client.prepare(ON_S0, f"caller {i}", f"caller-{i}") for i in range(4)]
                # Built by hand (prepare refuses the id): a caller that bypassed the checks.
                bad = dataclasses.replace(good[0], id="evil\n", body_json='"x"')
                # Enqueued in one turn of the loop: one group commit, one script call.
                return await asyncio.gather(*(group.enqueue(m) for m in [good[0], bad, *good[1:]]))
        finally:
            if etcd is not None:
                await etcd.aclose()

    results = asyncio.run(enqueue_together())
    assert isinstance(results[1], InvalidInput)
    assert [(r.id, r.duplicate) for r in results if isinstance(r, Enqueued)] == [
        (f"caller-{i}", False) for i in range(4)
    ]
    with cluster.shard("s0").primary.client() as conn:
        assert held_ids(conn, ON_S0) == {f"caller-{i}" for i in range(4)}
