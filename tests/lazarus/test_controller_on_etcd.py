"""A controller node whose coordination store is etcd (`coordination_backend: etcd`), served
over real HTTP beside a real Redis (its event stream and record log): what it decides is kept in
etcd, and when etcd loses its quorum the node says so instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common.etcd_processes import EtcdCluster
from lazarus_lite.coordination.opening import StoreAddress, opened_coordination_store
from lazarus_lite.service import create_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.local_cluster import start_node
from tests.conftest import ServedApp

TOKEN = "controller-on-etcd-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def address(etcd: EtcdCluster, tmp_path: Path) -> Iterator[StoreAddress]:
    control = start_node("control", "control", None, tmp_path)
    try:
        yield StoreAddress(control_url=control.url, coordination_backend="etcd",
                           etcd_endpoints=",".join(etcd.endpoints))  # fmt: skip
    finally:
        control.stop()


@pytest.fixture
def node(address: StoreAddress, tmp_path: Path) -> Iterator[httpx.Client]:
    asyncio.run(_empty(address))
    rules = tmp_path / "rules"
    rules.mkdir()
    settings = ControllerSettings(node_id="n1", api_token=TOKEN, rules=[rules], services=None,
                                  quorum=1, **address.model_dump())  # fmt: skip
    with (
        ServedApp(create_app(settings)) as served,
        httpx.Client(base_url=served.url, timeout=15) as client,
    ):
        yield client


async def _empty(address: StoreAddress) -> None:
    async with opened_coordination_store(address) as store:
        await store.client.delete("/", prefix=True)  # type: ignore[attr-defined]


async def _kill_switches(address: StoreAddress) -> dict:
    async with opened_coordination_store(address) as store:
        return await store.flags.kill_switches()


def test_a_kill_switch_engaged_through_the_api_is_kept_in_etcd(
    node: httpx.Client, address: StoreAddress
) -> None:
    answer = node.post("/v1/killswitch", json={"enabled": True, "by": "ops"}, headers=AUTH)
    assert answer.status_code == 200
    assert list(asyncio.run(_kill_switches(address))) != []
    with redis.Redis.from_url(address.control_url) as control:
        assert not control.exists("lz:killswitch")


def test_healthz_reports_the_store_unhealthy_once_etcd_has_no_quorum(
    node: httpx.Client, etcd: EtcdCluster
) -> None:
    for member in etcd.members[:2]:
        member.kill()
    answer = node.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["checks"] == [{"name": "control_store", "ok": False}]
