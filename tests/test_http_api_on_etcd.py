"""The ratequeue API reading its topology from etcd (`topology_backend: etcd`): it routes by
the map kept there, not by the control store's, and learns a new epoch from etcd's watch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from common.errors import InvalidSetting
from common.etcd_processes import EtcdCluster
from ratequeue.config import ServiceSettings
from ratequeue.local_cluster import LocalCluster
from ratequeue.topology import Topology
from tests.conftest import ServedApi
from tests.etcd_topology import publish_in_etcd, topology_moved_to_etcd


@pytest.fixture
def topology_in_etcd(cluster: LocalCluster, etcd: EtcdCluster) -> Topology:
    """The cluster's map moved from its control store to etcd."""
    return topology_moved_to_etcd(cluster, etcd)


@pytest.fixture
def http(
    cluster: LocalCluster, etcd: EtcdCluster, topology_in_etcd: Topology
) -> Iterator[httpx.Client]:
    settings = ServiceSettings(control_url=cluster.control.url, topology_backend="etcd",
                               etcd_endpoints=",".join(etcd.endpoints), wait_timeout_ms=300,
                               retry_deadline=0.5, refresh_interval=60)  # fmt: skip
    with ServedApi(settings) as api, httpx.Client(base_url=api.url, timeout=10) as session:
        yield session


def eventually(what: str, probe: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def test_an_enqueue_is_routed_by_the_topology_in_etcd(http: httpx.Client) -> None:
    answer = http.post("/v1/numbers/+14155550100/messages", json={"id": "m-1", "body": "hi"})
    assert answer.status_code == 201, answer.text


def test_a_new_epoch_in_etcd_reaches_the_api_by_its_watch(
    http: httpx.Client, etcd: EtcdCluster, topology_in_etcd: Topology
) -> None:
    newer = topology_in_etcd.next_with(topology_in_etcd.shards[0])
    asyncio.run(publish_in_etcd(etcd, topology_in_etcd.epoch, newer))
    # The refresh interval is a minute: only the watch can deliver within the wait.
    eventually("the new epoch", lambda: http.get("/v1/topology").json()["epoch"] == newer.epoch)


def test_a_service_on_etcd_without_endpoints_is_refused_naming_etcd_endpoints() -> None:
    with pytest.raises(InvalidSetting, match=r"^setting 'etcd_endpoints': required"):
        ServiceSettings.parse(control_url="redis://127.0.0.1:1", topology_backend="etcd")
