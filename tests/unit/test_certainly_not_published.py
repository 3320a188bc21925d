"""`detection.streams.certainly_not_published`: only a refused first connection proves a publish
never reached the stream (a controller then decides its own report itself); a timeout, or a
connection closed after the command went out, proves nothing."""

from __future__ import annotations

import asyncio
import socket

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from detection.events import new_event
from detection.streams import RedisEventStream, certainly_not_published


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def report() -> object:
    return new_event("RedisMasterDown", environment="dev", region="local", service="ratequeue",
                     host="127.0.0.1:1", source="lazarus:n1", shard="s0")  # fmt: skip


async def publish_error(url: str) -> BaseException:
    stream = RedisEventStream.from_url(url)
    try:
        await stream.publish(report())  # type: ignore[arg-type]
    except Exception as error:
        return error
    finally:
        await stream._control.aclose()
    raise AssertionError("the publish went through")


def test_a_publish_to_a_stream_that_refuses_the_connection_certainly_never_arrived() -> None:
    error = asyncio.run(publish_error(f"redis://127.0.0.1:{closed_port()}/0"))
    assert certainly_not_published(error)


def test_a_publish_whose_connection_closed_after_sending_is_not_certain() -> None:
    # The stream reads the command, closes the connection and stops listening (it died having
    # perhaps applied it): a client that reconnected would be refused and wrongly be "certain".
    async def scenario() -> BaseException:
        received = asyncio.Event()

        async def take_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1024)
            received.set()
            writer.close()

        server = await asyncio.start_server(take_then_die, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def stop_listening() -> None:
            await received.wait()
            server.close()

        stopping = asyncio.create_task(stop_listening())
        error = await publish_error(f"redis://127.0.0.1:{port}/0")
        await stopping
        return error

    error = asyncio.run(scenario())
    assert isinstance(error, RedisConnectionError)
    assert not certainly_not_published(error)


def test_a_publish_that_timed_out_may_have_arrived() -> None:
    assert not certainly_not_published(TimeoutError())
    assert not certainly_not_published(RedisTimeoutError("Timeout reading from socket"))


def test_a_timeout_is_not_certain_even_with_a_refusal_further_down_its_chain() -> None:
    # The watch's own timeout, landing in a retry's backoff after a refused reconnect.
    refused = RedisConnectionError("Error 111 connecting")
    refused.__context__ = ConnectionRefusedError(111, "refused")
    cancelled = asyncio.CancelledError()
    cancelled.__context__ = refused
    timeout = TimeoutError()
    timeout.__context__ = cancelled
    assert not certainly_not_published(timeout)
