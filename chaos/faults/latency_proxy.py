"""A small TCP proxy that adds a fixed delay to every chunk it forwards: the latency fault's
stand-in for `netem`, which this kernel lacks.

Run as `python -m chaos.faults.latency_proxy --target-port P --delay-ms N`; it binds a listening
port (0: any free one), prints `LISTENING <port>` on stdout once it accepts connections, and
forwards each connection to the target. The delay keeps order and throughput: every chunk is
sent `delay` after it was read, so a stream is shifted in time, not slowed down. `--direction`
says which way is delayed: `egress` (from the node to its peer, Gremlin's sense), `ingress`, or
`both`. With `--parent-pid` it exits as soon as that process is gone, so a crashed run leaves
no proxy behind. The iptables rule that steers traffic here is the latency fault's business
(`chaos.faults.local.latency`).

Not for: shaping bandwidth, dropping packets, or anything but plain TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy `reader` to `writer`, each chunk `delay` seconds after it arrived; half-close at
    EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def read_side() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data or None))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time(), None))

    async def write_side() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading


async def _handle(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    *,
    target_host: str,
    target_port: int,
    ingress: float,
    egress: float,
) -> None:
    try:
        node_reader, node_writer = await asyncio.open_connection(target_host, target_port)
    except OSError:
        client_writer.close()
        return
    try:
        # client -> node is the node's ingress; node -> client its egress.
        await asyncio.gather(
            _pipe(client_reader, node_writer, ingress),
            _pipe(node_reader, client_writer, egress),
        )
    except (ConnectionError, OSError):
        pass
    finally:
        for writer in (node_writer, client_writer):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
            return
        await asyncio.sleep(0.5)


async def serve(args: argparse.Namespace) -> None:
    delay = args.delay_ms / 1000.0
    ingress = delay if args.direction in ("ingress", "both") else 0.0
    egress = delay if args.direction in ("egress", "both") else 0.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, target_host=args.target_host, target_port=args.target_port,
                      ingress=ingress, egress=egress)  # fmt: skip

    server = await asyncio.start_server(handle, args.listen_host, args.listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    watcher = None
    if args.parent_pid:
        watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop))
    async with server:
        await stop.wait()
    if watcher is not None:
        watcher.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--direction", choices=("egress", "ingress", "both"), default="egress")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    try:
        asyncio.run(serve(args))
    except OSError as error:
        print(f"latency proxy: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
