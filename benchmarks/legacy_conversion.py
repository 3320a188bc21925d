"""What a layout-2 call costs while a shard still holds layout-1 data (docs/upgrading.md): a
redis-server loaded with `--numbers` numbers of `--messages` layout-1 messages each, then one-
message enqueues (`ENQUEUE_BATCH`) until the conversion is done, timing each call. Not a
throughput benchmark (queue_throughput.py is): it checks that no call blocks the shard long."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import redis
import typer

from common.redis_processes import start_redis
from ratequeue import scripts

NUMBER = "+14155550100"


def load_layout_1(conn: redis.Redis, numbers: int, messages: int) -> None:
    now_ms = int(time.time() * 1000)
    with conn.pipeline(transaction=False) as pipe:
        for n in range(numbers):
            number = f"+1999{n:07d}"
            for m in range(messages):
                pipe.hset("rq:msg", f"{number}/m{m}", f'0|1|{now_ms}|{number}|"old"')
                pipe.rpush(f"rq:q:{number}", f"m{m}")
            pipe.hset("rq:seg", number, messages)
            pipe.zadd("rq:ready", {number: 0})
            if n % 2000 == 1999:
                pipe.execute()
        pipe.execute()


def timed_enqueue(conn: redis.Redis, sha: str, message_id: str) -> float:
    line = f'{NUMBER}|1:1|1|{message_id}|"x"'
    started = time.perf_counter()
    conn.evalsha(sha, 0, "1", 3600, 36_000, 1_000_000, line)
    return time.perf_counter() - started


def main(
    numbers: int = typer.Option(100_000, help="layout-1 numbers to convert"),
    messages: int = typer.Option(1, help="layout-1 messages per number"),
) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        node = start_redis("legacy", "control", None, Path(workdir))
        try:
            conn = node.client(timeout=60)
            conn.set("rq:fence", "1")
            load_layout_1(conn, numbers, messages)
            sha = conn.script_load(scripts.ENQUEUE_BATCH)
            during = []
            while conn.exists("rq:seg"):
                during.append(timed_enqueue(conn, sha, f"during-{len(during)}"))
            after = [timed_enqueue(conn, sha, f"after-{i}") for i in range(200)]
        finally:
            node.stop()
    typer.echo(
        f"{numbers} numbers x {messages} messages converted in {len(during)} calls: "
        f"median {statistics.median(during) * 1000:.2f} ms, max {max(during) * 1000:.2f} ms "
        f"per call; after: median {statistics.median(after) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    typer.run(main)
