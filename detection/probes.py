"""Small async health probes of one Redis node, shared by the sensors, the Nagios check and the
controller's precondition checks.

Each probe opens a fresh connection with a short timeout, asks one question and closes it, so a
paused (SIGSTOPped) or blackholed node counts as failed within the timeout instead of hanging, and
no pooled connection carries state from one probe to the next. Probes never raise for an
unreachable node: they report it. Probe a node on its *peer* address (`NodeRef.peer_address`).

For: "does this node answer now, and what does its replication look like now".
Not for: deciding anything from the answers, and never for changing a node (probes are
read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import TimeoutError as RedisTimeoutError


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one PING: `latency_s` is the PING round trip when `ok`, else the time
    spent before giving up; `error` says why it failed."""

    ok: bool
    latency_s: float
    error: str | None = None
    refused: bool = False
    """The host answered that nothing listens on the port (connection refused): a process
    that died, not one that is slow or cut off. Strong evidence, and it comes at once."""
    silent: bool = False
    """No answer within the timeout (a stalled process, a cut path): the only failure that
    took the whole timeout to see."""


def parse_address(text: str) -> tuple[str, int]:
    """Split 'host:port' (IPv6 as '[::1]:port'); raise ValueError saying what is wrong."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not HOST:PORT (port {port_text!r} is not a number)"
        ) from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port {port} is not 1-65535)")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_error(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    text = " ".join(str(error).split()) or type(error).__name__  # one line
    return text.rstrip(".")


def refused_by_live_host(error: BaseException) -> bool:
    """Did a live host refuse the connection (nothing listens on the port), rather than stay
    silent? Only a refused connect counts: a reset can come from a live server too (a client
    killed, a full buffer). redis-py wraps the OS error, keeping the errno in its text."""
    seen: BaseException | None = error
    chain: set[int] = set()
    while seen is not None and id(seen) not in chain:
        chain.add(id(seen))
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    return "Error 111 " in text or "Connection refused" in text


def failed_probe(started: float, error: BaseException) -> ProbeResult:
    return ProbeResult(False, time.perf_counter() - started, describe_error(error),
                       refused=refused_by_live_host(error),
                       silent=isinstance(error, TimeoutError | RedisTimeoutError))  # fmt: skip


# A new connection asks nothing but what it is told to: redis-py 8 would otherwise open each
# with `HELLO 3`, then name itself (`CLIENT SETINFO` twice) and ask for maintenance
# notifications, which Redis 7.0 refuses: a round trip or two and three errors on the server
# before every probe, and every probe is a new connection. RESP2 needs no greeting.
QUIET_DRIVER = DriverInfo(name=None, lib_version=None)
QUIET_PROTOCOL = 2


def probe_connection(host: str, port: int, timeout: float) -> aioredis.Redis:
    """One connection, opened for one probe only, that asks nothing but what it is told to."""
    # No retries: a probe that retries reports a failed node late, which is the one thing a
    # probe must not do.
    return aioredis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
        driver_info=QUIET_DRIVER,
        protocol=QUIET_PROTOCOL,
    )


async def _close(connection: aioredis.Redis) -> None:
    # Closing a broken connection must not hide the probe's result.
    with contextlib.suppress(Exception):
        await connection.aclose()


async def ping(
    host: str, port: int, timeout: float = 0.2, *, source_host: str | None = None
) -> ProbeResult:
    """PING `host:port` over a fresh connection; connect and PING together take at most about
    `timeout` seconds. A reply other than PONG (e.g. LOADING) counts as failed. With
    `source_host`, the connection leaves from that local address (a sensor's own address, so
    the path from one sensor can be told apart, and cut, in partition experiments)."""
    if source_host is not None:
        return await _ping_from(source_host, host, port, timeout)
    started = time.perf_counter()
    connection = probe_connection(host, port, timeout)
    try:
        async with asyncio.timeout(timeout):
            await connection.initialize()  # connects
            sent = time.perf_counter()
            answer = await connection.ping()
        latency = time.perf_counter() - sent
        if answer is not True:
            return ProbeResult(False, latency, f"unexpected PING reply {answer!r}")
        return ProbeResult(True, latency, None)
    except Exception as error:
        return failed_probe(started, error)
    finally:
        await _close(connection)


async def _ping_from(source_host: str, host: str, port: int, timeout: float) -> ProbeResult:
    # redis-py cannot bind a source address, and a PING is one line of RESP each way.
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port,
                                                           local_addr=(source_host, 0))  # fmt: skip
            sent = time.perf_counter()
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await writer.drain()
            answer = await reader.readline()
        latency = time.perf_counter() - sent
        if answer.strip() != b"+PONG":
            return ProbeResult(False, latency, f"unexpected PING reply {answer.strip()!r}")
        return ProbeResult(True, latency, None)
    except Exception as error:
        return failed_probe(started, error)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def replication_info_or_error(
    host: str, port: int, timeout: float = 0.5
) -> tuple[dict[str, Any] | None, str | None]:
    """`INFO replication` of `host:port` as a dict, or (None, why it could not be read)."""
    connection = probe_connection(host, port, timeout)
    try:
        async with asyncio.timeout(timeout):
            info = await connection.info("replication")
        return dict(info), None
    except Exception as error:
        return None, describe_error(error)
    finally:
        await _close(connection)


def replica_offset(info: dict[str, Any]) -> tuple[str | None, int | None]:
    """(replication id, offset) from `INFO replication`.

    On a replica this is the replication history it follows (`master_replid`) and how far it
    has applied it (`slave_repl_offset`, still valid after the link to its primary dropped,
    unlike `ROLE`, which then reports -1). On a primary it is its own `master_replid` and
    `master_repl_offset`. Offsets are only comparable between equal replication ids."""
    replid = info.get("master_replid")
    key = "slave_repl_offset" if info.get("role") == "slave" else "master_repl_offset"
    raw = info.get(key)
    try:
        offset = None if raw is None else int(raw)
    except (TypeError, ValueError):
        offset = None
    return (None if replid is None else str(replid)), offset


def replica_master(info: dict[str, Any]) -> str | None:
    """'host:port' of the primary a replica follows according to its INFO, else None."""
    host, port = info.get("master_host"), info.get("master_port")
    if info.get("role") != "slave" or not host or not port:
        return None
    return format_address(str(host), int(port))
