"""A rolling upgrade from layout 1 to layout 2 on real redis-server shards: code of both versions
on one shard at once. Layout 1's scripts (tests/data/layout1_*.lua: its helpers, its DEQUEUE and
ENQUEUE_BATCH) are the ones the code before layout 2 ran, byte for byte, so these tests run the
old code, not a model of it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from ratequeue import scripts
from ratequeue.client import RatequeueClient
from ratequeue.local_cluster import LocalCluster
from ratequeue.rates import Rate
from ratequeue.scripts import held_ids
from ratequeue.shard import make_receipt

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
    return [leased[1] for leased in out]


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


def test_an_unfit_layout_1_record_is_quarantined_and_the_rest_of_its_number_converts(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_layout_1(conn, NUMBER, {"good": f'0|1|{now_ms}|{NUMBER}|"fine"', "bad": "not a record"})
    client.enqueue(NUMBER, "new", "n1")  # the number the call touches converts first
    assert [m.id for m in client.dequeue(10, 30)] == ["good"]  # layout 1's went ahead
    assert held_ids(conn, NUMBER) == {"good", "n1"}
    assert layout_1_state(conn, NUMBER) == ({}, [], None, None)
    why, record = conn.hget("rq:v2:quarantine", f"{NUMBER}/bad").split(b"|", 1)
    assert (why, record) == (b"record does not parse", b"not a record")
    assert conn.eval(scripts.SHARD_STATS, 0)[3] == 1  # ratequeue_shard_quarantined
    assert conn.exists("rq:seg", "rq:leases", "rq:lease") == 0


def test_a_bare_sequence_lease_whose_record_does_not_parse_is_quarantined_not_kept(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    expires = int(time.time() * 1000) + 30_000
    conn.zadd("rq:leases", {"77": expires, "78": expires})  # 78 names no record at all
    conn.hset("rq:lease", "77", f"{NUMBER}/x")
    conn.hset("rq:msg", f"{NUMBER}/x", "garbage")
    client.enqueue(NUMBER, "new", "n1")
    assert conn.exists("rq:seg", "rq:leases", "rq:lease", "rq:msg") == 0
    assert conn.hget("rq:v2:quarantine", f"{NUMBER}/x").startswith(b"record does not parse")
    assert held_ids(conn, NUMBER) == {"n1"}


def put_many_layout_1(conn: redis.Redis, count: int, now_ms: int) -> list[str]:
    """`count` numbers with one layout-1 message each (`m`): the numbers."""
    numbers = [f"+1999{i:07d}" for i in range(count)]
    with conn.pipeline(transaction=False) as pipe:
        for number in numbers:
            pipe.hset("rq:msg", f"{number}/m", f'0|1|{now_ms}|{number}|"old"')
            pipe.rpush(f"rq:q:{number}", "m")
            pipe.hset("rq:seg", number, 1)
            pipe.zadd("rq:ready", {number: 0})
        pipe.execute()
    return numbers


def test_a_call_converts_the_numbers_it_touches_and_at_most_100_others(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    others = put_many_layout_1(conn, 250, int(time.time() * 1000))
    put_layout_1(conn, NUMBER, {"old": f'0|1|{int(time.time() * 1000)}|{NUMBER}|"first"'})
    client.enqueue(NUMBER, "second", "new")
    assert held_ids(conn, NUMBER) == {"old", "new"}  # touched: converted before it is served
    left = conn.hlen("rq:seg")
    assert 250 - 100 <= left < 250  # others: some converted, never more than 100
    calls = 1
    while conn.exists("rq:seg") and calls < 20:
        client.set_rate(NUMBER, Rate(per_second=1, burst=1))  # any write call converts its share
        now_left = conn.hlen("rq:seg")
        assert left - 100 <= now_left < left
        left, calls = now_left, calls + 1
    assert conn.exists("rq:seg", "rq:msg", "rq:ready") == 0
    assert all(held_ids(conn, number) == {"m"} for number in others)
    assert conn.eval(scripts.SHARD_STATS, 0)[0] == 252


def test_a_number_status_on_a_full_shard_reads_layout_1_without_converting(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_layout_1(
        conn, NUMBER, {"a": f'0|1|{now_ms}|{NUMBER}|"x"', "b": f'0|1|{now_ms}|{NUMBER}|"y"'}
    )
    conn.config_set("maxmemory", "1")  # every write is refused (noeviction)
    try:
        info = client.number_info(NUMBER)
    finally:
        conn.config_set("maxmemory", "0")
    assert (info.depth, info.held_segments) == (2, 2)
    assert conn.llen(f"rq:q:{NUMBER}") == 2  # a read converts nothing


def test_a_layout_1_receipt_acknowledges_its_message_through_layout_2_code(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    assert layout_1_enqueue(conn, "v1-1", '"old"') == b"ok"
    assert layout_1_dequeue(conn) == [b"v1-1"]
    [lease] = conn.zrange("rq:leases", 0, -1)
    receipt = make_receipt(client.number_info(NUMBER).shard, lease.decode())
    assert client.ack([receipt]) == 1
    assert client.number_info(NUMBER).held_segments == 0
    assert conn.exists("rq:seg", "rq:leases", "rq:msg") == 0


def test_a_call_stops_taking_other_numbers_once_1000_messages_are_converted(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    for number in ("+19990000001", "+19990000002", "+19990000003"):
        records = {f"m{i}": f'0|1|{now_ms}|{number}|"x"' for i in range(600)}
        put_layout_1(conn, number, records)
    client.enqueue(NUMBER, "new", "n1")
    assert conn.hlen("rq:seg") == 1  # 600, then 1,200 messages: the third waits
    client.enqueue(NUMBER, "new", "n2")
    assert conn.exists("rq:seg", "rq:msg") == 0


def test_a_batch_converts_every_number_it_names_before_the_bounded_others(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_many_layout_1(conn, 150, now_ms)
    named = (NUMBER, "+14155550101")  # same shard
    for number in named:
        put_layout_1(conn, number, {"old": f'0|1|{now_ms}|{number}|"first"'})
        conn.zadd("rq:ready", {number: now_ms + 3_600_000})  # last in the others' order
    client.enqueue_many([client.prepare(number, "second", "new") for number in named])
    assert [held_ids(conn, number) for number in named] == [{"old", "new"}] * 2
    assert conn.hlen("rq:seg") == 50
