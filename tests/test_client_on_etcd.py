"""The synchronous Python client given etcd's members (`RatequeueClient(..., etcd_endpoints=)`):
it routes by the map kept in etcd, not by the control store's, follows a new epoch there, and
refuses unusable endpoints before it starts anything. Runs on etcd whatever the suite's switch
says (the switch's own use of it is `make_client` in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from common.errors import InvalidSetting
from common.etcd_processes import EtcdCluster
from ratequeue.client import ClientSettings, RatequeueClient
from ratequeue.local_cluster import LocalCluster
from ratequeue.scripts import held_ids
from tests.etcd_topology import publish_in_etcd, topology_moved_to_etcd

NUMBER = "+14155550100"


def test_a_client_given_etcd_members_routes_by_the_map_kept_there(
    cluster: LocalCluster, etcd: EtcdCluster
) -> None:
    topology_moved_to_etcd(cluster, etcd)  # only etcd has the map now
    settings = ClientSettings(wait_timeout_ms=300)
    with RatequeueClient(cluster.control.url, settings,
                         etcd_endpoints=",".join(etcd.endpoints)) as client:  # fmt: skip
        stored = client.enqueue(NUMBER, "via etcd's map", "via-etcd")
    with cluster.shard(stored.shard).primary.client() as conn:
        assert held_ids(conn, NUMBER) == {"via-etcd"}


def test_a_client_given_etcd_members_follows_a_new_epoch_published_there(
    cluster: LocalCluster, etcd: EtcdCluster
) -> None:
    topology = topology_moved_to_etcd(cluster, etcd)
    settings = ClientSettings(refresh_interval=60)  # etcd's watch only
    with RatequeueClient(cluster.control.url, settings,
                         etcd_endpoints=",".join(etcd.endpoints)) as client:  # fmt: skip
        again = topology.model_copy(update={"epoch": topology.epoch + 1})
        asyncio.run(publish_in_etcd(etcd, topology.epoch, again))
        deadline = time.monotonic() + 5
        while client.topology.epoch != again.epoch and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.topology.epoch == again.epoch


@pytest.mark.parametrize("endpoints", ["", "https://127.0.0.1:2379"])
def test_a_client_given_unusable_etcd_endpoints_is_refused_naming_them(endpoints: str) -> None:
    threads = threading.active_count()
    with pytest.raises(InvalidSetting, match="etcd_endpoints"):
        RatequeueClient("redis://127.0.0.1:1", etcd_endpoints=endpoints)
    assert threading.active_count() == threads  # no loop thread left behind


def test_a_client_given_an_unusable_control_url_leaves_no_thread_behind() -> None:
    threads = threading.active_count()
    with pytest.raises(ValueError):
        RatequeueClient("nope://x")
    assert threading.active_count() == threads
