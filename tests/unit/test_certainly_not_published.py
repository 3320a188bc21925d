"""`detection.streams.certainly_not_published`: only a refused connection proves a publish never
reached the stream (a controller then decides its own report itself); a timeout proves nothing."""

from __future__ import annotations

import asyncio
import socket

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from detection.streams import certainly_not_published


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_publish_to_a_redis_that_refuses_the_connection_certainly_never_arrived() -> None:
    async def publish() -> BaseException:
        connection = aioredis.Redis(port=closed_port(), socket_timeout=1)
        try:
            await connection.xadd("events", {"event": "{}"})
        except RedisConnectionError as error:
            return error
        finally:
            await connection.aclose()
        raise AssertionError("the publish went through")

    assert certainly_not_published(asyncio.run(publish()))


def test_a_publish_that_timed_out_may_have_arrived() -> None:
    assert not certainly_not_published(TimeoutError())
    assert not certainly_not_published(RedisTimeoutError("Timeout reading from socket"))


def test_a_connection_closed_after_sending_may_have_arrived() -> None:
    assert not certainly_not_published(RedisConnectionError("Connection closed by server."))
