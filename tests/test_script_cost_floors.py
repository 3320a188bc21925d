"""benchmarks/script_cost.py compares the queue scripts with floors: the Lua floor pass and the
same pass as module commands in C (benchmarks/native/native_floor.c). The comparison means
something only if every floor does the same work: these tests run the same messages through
each and compare what the primary and its replica hold after each step. Real redis-server
processes, the module compiled with the machine's C compiler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from benchmarks.script_cost import (
    DEDUP_WINDOW_S,
    EPOCH,
    LEASE_MS,
    REQUEUE_LIMIT,
    FloorScripts,
    NativeFloor,
    NativeFloorOnKeys,
    NativeFloorVerbatim,
    build_native_floor,
    message_lines,
    runner,
)
from ratequeue.local_cluster import LocalCluster, wait_for_replicas_in_sync

Floor = FloorScripts | NativeFloor | NativeFloorOnKeys | NativeFloorVerbatim
TIME_FIELDS = {"t"}


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("floors")
    library = build_native_floor(workdir)
    cluster = LocalCluster.start(
        workdir / "cluster", shards=1, replicas=1, node_args=("--loadmodule", str(library))
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def held(conn: redis.Redis) -> dict[str, object]:
    """Every key and its value, times (a number's `t`, a lease's expiry) left out: they come
    from the clock."""
    state: dict[str, object] = {}
    for key in sorted(conn.keys("*")):
        kind = conn.type(key)
        if kind == b"list":
            state[key.decode()] = conn.lrange(key, 0, -1)
        elif kind == b"hash":
            fields = conn.hgetall(key)
            state[key.decode()] = {f: v for f, v in fields.items() if f.decode() not in TIME_FIELDS}
        elif kind == b"zset":
            members = conn.zrange(key, 0, -1, withscores=True)
            keep_scores = key != b"rq:v2:leases"
            state[key.decode()] = [(m, s if keep_scores else None) for m, s in members]
        else:
            state[key.decode()] = conn.get(key)
    return state


def pass_in_steps(cluster: LocalCluster, floor: Floor) -> list[tuple[object, object]]:
    """Enqueue, lease twice, acknowledge the first leases: (primary, replica) after each."""
    primary = cluster.shards[0].primary.client(timeout=10)
    replica = cluster.shards[0].replicas[0].client(timeout=10)
    primary.flushall()
    primary.set("rq:fence", EPOCH)
    lines = message_lines([f"+1555000{i:04d}" for i in range(7)], 60, 0)
    seen: list[tuple[object, object]] = []

    def after_step() -> None:
        primary.wait(1, 5000)
        seen.append((held(primary), held(replica)))

    enqueue = runner(primary, floor.ENQUEUE_BATCH)
    for start in range(0, len(lines), 25):
        enqueue(
            args=[EPOCH, DEDUP_WINDOW_S, 36_000, 1_000_000, "\n".join(lines[start : start + 25])]
        )
    after_step()
    dequeue, ack = runner(primary, floor.DEQUEUE), runner(primary, floor.ACK)
    _, first = dequeue(args=[5, LEASE_MS, REQUEUE_LIMIT])
    after_step()
    dequeue(args=[20, LEASE_MS, REQUEUE_LIMIT])
    after_step()
    assert ack(args=[b" ".join(first[0::5]), DEDUP_WINDOW_S]) == 5
    after_step()
    return seen


@pytest.mark.parametrize("floor", [NativeFloor(), NativeFloorOnKeys(), NativeFloorVerbatim()],
                         ids=["command calls", "key API", "replicated once per call"])  # fmt: skip
def test_a_native_floor_leaves_what_the_lua_floor_leaves_on_the_primary_and_the_replica(
    shard: LocalCluster, floor: Floor
) -> None:
    wait_for_replicas_in_sync(shard.shards[0].primary, shard.shards[0].replicas)
    lua = pass_in_steps(shard, FloorScripts())
    native = pass_in_steps(shard, floor)
    for step, ((lua_primary, lua_replica), (c_primary, c_replica)) in enumerate(
        zip(lua, native, strict=True)
    ):
        assert c_primary == lua_primary, f"primary after step {step}"
        assert c_replica == lua_replica, f"replica after step {step}"
        assert c_replica == c_primary, f"replica follows the primary after step {step}"
