"""A TCP forwarder on a free loopback port that stands in for Docker's userland proxy
(`docker-proxy`, what publishes staging's API port when dockerd runs with `--iptables=false`):
it accepts every connection itself and forwards it to its backend; while the backend is away
(`away()`: its container killed and restarting), it still accepts each connection and closes it
a moment later without an answer, as docker-proxy does when it cannot reach the container.

Not for: delaying traffic (`chaos.faults.latency_proxy`) or anything but plain TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from common.nodes import CLIENT_HOST
from common.redis_processes import free_port

CHUNK = 65536


class UserlandProxy:
    def __init__(self, backend_port: int, *, refuse_after: float = 0.2) -> None:
        """`refuse_after`: how long a connection accepted while the backend is away is held
        before it is closed (docker-proxy's attempt to reach the container)."""
        self.backend_port = backend_port
        self.refuse_after = refuse_after
        self.port = free_port((CLIENT_HOST,))
        self.url = f"http://{CLIENT_HOST}:{self.port}"
        self._away = False
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="userland-proxy", daemon=True)

    def away(self) -> None:
        """The backend dies: the connections it had end, new ones are accepted and closed."""
        self._away = True
        self._loop.call_soon_threadsafe(self._close_open)

    def _close_open(self) -> None:
        for writer in list(self._open):
            writer.close()

    def back(self) -> None:
        self._away = False

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, CLIENT_HOST, self.port)
        self._started.set()
        async with server:
            await self._stop.wait()
            self._close_open()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            if self._away:
                await asyncio.sleep(self.refuse_after)
                return
            backend_reader, backend_writer = await asyncio.open_connection(
                CLIENT_HOST, self.backend_port
            )
            try:
                await asyncio.gather(_copy(reader, backend_writer), _copy(backend_reader, writer))
            finally:
                backend_writer.close()
        except OSError:
            return
        finally:
            self._open.discard(writer)
            writer.close()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._started.wait(timeout=10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (the other way may still be answering)."""
    with contextlib.suppress(OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
