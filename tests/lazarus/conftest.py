"""Fixtures the controller's store-level tests share: one real redis-server control store per
module, emptied for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from common.redis_processes import RedisProcess
from ratequeue.local_cluster import start_node


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
