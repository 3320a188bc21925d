"""The ratequeue API while the store it reads the topology from is unreachable, on both backends
(the control Redis stopped; etcd without its quorum), on real processes: it keeps serving by
its cached topology, and `/healthz` says the store is unreachable and the topology cached while
the instance stays in the load balancer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import TOPOLOGY_KEY, Topology
from tests.conftest import ServedApi

CACHED = {"name": "control_store", "ok": False,
          "detail": "unreachable; using the cached topology"}  # fmt: skip


def store_check(session: httpx.Client) -> tuple[int, dict, dict]:
    """`/healthz`'s status, its control store check and its topology check."""
    answer = session.get("/healthz")
    checks = {c["name"]: c for c in answer.json()["checks"]}
    return answer.status_code, checks["control_store"], checks["topology"]


def enqueue(session: httpx.Client, message_id: str) -> int:
    body = {"id": message_id, "body": "hi"}
    return session.post("/v1/numbers/+14155550100/messages", json=body).status_code


# -- the control store in Redis ---------------------------------------------------------------


@pytest.fixture
def redis_away(cluster: LocalCluster, http: httpx.Client) -> httpx.Client:
    assert enqueue(http, "before") == 201  # the topology is read and cached
    cluster.control.stop()
    return http


def test_without_the_control_redis_the_api_still_takes_messages(redis_away: httpx.Client) -> None:
    assert enqueue(redis_away, "while-away") == 201


def test_without_the_control_redis_healthz_says_the_topology_is_cached(
    redis_away: httpx.Client,
) -> None:
    status, store, topology = store_check(redis_away)
    assert (status, store) == (200, CACHED)
    assert topology["ok"] and topology["detail"].startswith("epoch 1,")


# -- the topology on etcd ---------------------------------------------------------------------


async def _topology_into_etcd(etcd: EtcdCluster, topology: Topology) -> None:
    async with EtcdClient(EtcdClientSettings(endpoints=etcd.endpoints)) as client:
        await client.delete("/", prefix=True)  # what an earlier test left
        await EtcdTopologyStore(client).compare_and_set(0, topology)


@pytest.fixture
def etcd_away(
    cluster: LocalCluster, etcd: EtcdCluster, serve_api: Callable[..., ServedApi]
) -> Iterator[httpx.Client]:
    """An API reading its topology from etcd, which then loses its quorum."""
    with cluster.control.client() as control:
        topology = Topology.model_validate_json(control.get(TOPOLOGY_KEY))
        control.delete(TOPOLOGY_KEY)  # only etcd has it: the API cannot be reading Redis's
    asyncio.run(_topology_into_etcd(etcd, topology))
    api = serve_api(cluster, topology_backend="etcd", etcd_endpoints=",".join(etcd.endpoints))
    with httpx.Client(base_url=api.url, timeout=10) as session:
        assert enqueue(session, "before") == 201
        for member in etcd.members[:2]:
            member.kill()
        yield session


def test_without_an_etcd_quorum_the_api_still_takes_messages(etcd_away: httpx.Client) -> None:
    assert enqueue(etcd_away, "while-away") == 201


def test_without_an_etcd_quorum_healthz_says_the_topology_is_cached(
    etcd_away: httpx.Client,
) -> None:
    status, store, topology = store_check(etcd_away)
    assert (status, store) == (200, CACHED)
    assert topology["ok"] and topology["detail"].startswith("epoch 1,")
