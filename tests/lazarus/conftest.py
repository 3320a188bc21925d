"""Fixtures the controller's store-level tests share: one real redis-server control store per
module, emptied for each test, and the coordination store on the suite's control store
(`tests/suite_control.py`: the control Redis, or the module's etcd cluster with the record log
in the control Redis), emptied for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from common.etcd_processes import EtcdCluster
from common.redis_processes import RedisProcess
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import StoreAddress, open_coordination_store
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from ratequeue.local_cluster import start_node
from tests.suite_control import suite_control


@pytest.fixture(scope="module")
def control_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path_factory.mktemp("control"))
    yield node
    node.stop()


@pytest.fixture
async def control(control_node: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis(host=control_node.host, port=control_node.port)
    await connection.flushall()
    yield connection
    await connection.aclose()


@pytest.fixture
async def coordination(
    control: aioredis.Redis, control_node: RedisProcess, request: pytest.FixtureRequest
) -> AsyncIterator[CoordinationStore]:
    """An empty coordination store on the suite's control store."""
    if suite_control() == "redis":
        yield RedisCoordinationStore(control)
        return
    etcd: EtcdCluster = request.getfixturevalue("etcd")
    opened = open_coordination_store(
        StoreAddress(
            control_url=control_node.url,
            coordination_backend="etcd",
            etcd_endpoints=",".join(etcd.endpoints),
        )
    )
    await opened.client.delete("/", prefix=True)  # type: ignore[attr-defined]
    yield opened
    await opened.aclose()
