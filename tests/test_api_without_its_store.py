"""The ratequeue API while the store it reads the topology from is unreachable, on both backends
(the control Redis stopped; etcd without its quorum), on real processes: it keeps serving by
its cached topology, and `/healthz` says the store is unreachable and the topology cached while
the instance stays in the load balancer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from common.etcd_processes import EtcdCluster
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi
from tests.etcd_topology import topology_moved_to_etcd

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


def redis_goes_away(cluster: LocalCluster, serve_api: Callable[..., ServedApi]) -> ServedApi:
    """An API reading its topology from the control Redis, which then stops."""
    api = serve_api(cluster, topology_backend="redis")  # named: whatever the suite's store
    with httpx.Client(base_url=api.url, timeout=10) as session:
        assert enqueue(session, "before") == 201  # the topology is read and cached
    cluster.control.stop()
    return api


def etcd_goes_away(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi], etcd: EtcdCluster
) -> ServedApi:
    """An API reading its topology from etcd, which then loses its quorum."""
    topology_moved_to_etcd(cluster, etcd)  # only etcd has it: the API cannot be reading Redis's
    api = serve_api(cluster, topology_backend="etcd", etcd_endpoints=",".join(etcd.endpoints))
    with httpx.Client(base_url=api.url, timeout=10) as session:
        assert enqueue(session, "before") == 201
    for member in etcd.members[:2]:
        member.kill()
    return api


@pytest.fixture(params=["redis", "etcd"])
def store_away(
    request: pytest.FixtureRequest, cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> Iterator[httpx.Client]:
    """The API once the store its topology comes from is unreachable, on each backend."""
    if request.param == "redis":
        api = redis_goes_away(cluster, serve_api)
    else:
        api = etcd_goes_away(cluster, serve_api, request.getfixturevalue("etcd"))
    with httpx.Client(base_url=api.url, timeout=10) as session:
        yield session


def test_without_its_store_the_api_still_takes_messages(store_away: httpx.Client) -> None:
    assert enqueue(store_away, "while-away") == 201


def test_without_its_store_healthz_says_the_topology_is_cached(store_away: httpx.Client) -> None:
    status, store, topology = store_check(store_away)
    assert (status, store) == (200, CACHED)
    assert topology["ok"] and topology["detail"].startswith("epoch 1,")
