"""A rolling upgrade from layout 1 to layout 2 on real redis-server shards: code of both versions
on one shard at once. Layout 1's scripts (tests/data/layout1_*.lua: its helpers, its DEQUEUE and
ENQUEUE_BATCH) are the ones the code before layout 2 ran, byte for byte, so these tests run the
old code, not a model of it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from ratequeue.client import RatequeueClient
from ratequeue.local_cluster import LocalCluster
from ratequeue.scripts import held_ids

NUMBER = "+14155550100"
LAYOUT_1 = Path(__file__).parent / "data"


def layout_1_script(name: str, flags: str = "") -> str:
    """A script of layout 1 as its code sent it: flags, then the helpers, then its body."""
    prelude = (LAYOUT_1 / "layout1_prelude.lua").read_text()
    return flags + prelude + (LAYOUT_1 / f"layout1_{name}.lua").read_text()


def layout_1_dequeue(conn: redis.Redis) -> list[bytes]:
    """Layout 1's DEQUEUE (max 10, 30 s leases): the ids it leased."""
    script = layout_1_script("dequeue", "#!lua flags=allow-oom\n")
    _, out = conn.eval(script, 0, 10, 30_000, 200)
    return [out[i + 1] for i in range(0, len(out), 5)]


def layout_1_enqueue(conn: redis.Redis, message_id: str, body_json: str) -> bytes:
    """Layout 1's ENQUEUE_BATCH of one message to NUMBER (epoch 1, 1 segment): its status."""
    script = layout_1_script("enqueue")
    [(status, _)] = conn.eval(script, 0, "1", 3600, 36_000, 1_000_000,
                              message_id, NUMBER, 1, "1000:10", body_json)  # fmt: skip
    return status


@pytest.fixture
def conn(client: RatequeueClient, cluster: LocalCluster):
    with cluster.shard(client.number_info(NUMBER).shard).primary.client() as conn:
        yield conn


def test_a_dequeue_by_layout_1_code_neither_leases_nor_drops_layout_2_messages(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    client.enqueue(NUMBER, "new", "v2-1")
    assert layout_1_dequeue(conn) == []
    assert held_ids(conn, NUMBER) == {"v2-1"}
    assert [m.id for m in client.dequeue(10, 30)] == ["v2-1"]


def test_a_message_enqueued_by_layout_1_code_mid_upgrade_is_delivered_once_by_layout_2_code(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    assert layout_1_enqueue(conn, "v1-1", '"old"') == b"ok"
    [message] = client.dequeue(10, 30)
    assert (message.id, message.body) == ("v1-1", "old")
    assert layout_1_dequeue(conn) == []  # converted: layout 1 holds nothing of it any more
    assert client.ack([message.receipt]) == 1
    assert client.number_info(NUMBER).held_segments == 0


def test_a_retry_sent_to_layout_1_code_of_a_message_layout_2_holds_is_delivered_once(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    client.enqueue(NUMBER, "same", "both")
    assert layout_1_enqueue(conn, "both", '"same"') == b"ok"  # layout 1 cannot see layout 2's
    assert [m.id for m in client.dequeue(10, 30)] == ["both"]
    assert client.number_info(NUMBER).held_segments == 1
    assert held_ids(conn, NUMBER) == {"both"}


def layout_1_state(conn: redis.Redis, number: str) -> tuple:
    return (
        {k: v for k, v in conn.hgetall("rq:msg").items() if k.startswith(number.encode())},
        conn.lrange(f"rq:q:{number}", 0, -1),
        conn.hget("rq:seg", number),
        conn.zscore("rq:ready", number),
    )


def put_layout_1(conn: redis.Redis, number: str, records: dict[str, str]) -> None:
    for message_id, record in records.items():
        conn.hset("rq:msg", f"{number}/{message_id}", record)
        conn.rpush(f"rq:q:{number}", message_id)
    conn.hset("rq:seg", number, len(records))
    conn.zadd("rq:ready", {number: 0})


def test_a_number_with_a_layout_1_record_that_does_not_parse_is_left_in_layout_1_whole(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    neighbour = "+14155550101"  # same shard
    now_ms = int(time.time() * 1000)
    put_layout_1(conn, NUMBER, {"good": f'0|1|{now_ms}|{NUMBER}|"fine"', "bad": "not a record"})
    put_layout_1(conn, neighbour, {"old-n": f'0|1|{now_ms}|{neighbour}|"converted"'})
    before = layout_1_state(conn, NUMBER)
    client.enqueue(neighbour, "a neighbour's message", "n1")  # runs the conversion
    assert held_ids(conn, neighbour) == {"old-n", "n1"}  # the conversion ran...
    assert layout_1_state(conn, neighbour) == ({}, [], None, None)
    assert client.number_info(NUMBER).depth == 0  # ...moved nothing of NUMBER's...
    assert layout_1_state(conn, NUMBER) == before  # ...and deleted nothing of it
