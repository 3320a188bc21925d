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
from ratequeue.errors import IdConflict, ShardScriptFailed
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


def test_a_number_limited_just_before_a_drained_upgrade_stays_limited(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    # Drained first (docs/upgrading.md): of layout 1 only the number's GCRA time is left.
    conn.set(f"rq:tat:{NUMBER}", int(time.time() * 1000) + 60_000, px=60_000)
    client.enqueue(NUMBER, "new", "n1")
    assert client.dequeue(10, 30) == []
    assert client.number_info(NUMBER).next_eligible_at > time.time() + 30


def test_a_layout_1_rate_time_that_is_not_a_number_limits_nothing(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    put_layout_1(conn, NUMBER, {"old": f'0|1|{int(time.time() * 1000)}|{NUMBER}|"first"'})
    conn.set(f"rq:tat:{NUMBER}", "garbage")
    client.enqueue(NUMBER, "new", "n1")  # converts the number, reading its layout-1 time
    assert [m.id for m in client.dequeue(10, 30)] == ["old"]


def test_a_failing_shard_script_is_a_retryable_refusal_naming_the_shard(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    conn.set(f"rq:v2:n:{NUMBER}", "not a hash")  # the number's state of the wrong type
    with pytest.raises(ShardScriptFailed, match=r"shard .*: its script failed"):
        client.enqueue(NUMBER, "new", "n1")


def test_a_second_quarantined_record_of_the_same_key_keeps_the_first(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    conn.hset("rq:v2:quarantine", f"{NUMBER}/bad", "earlier|first")
    put_layout_1(conn, NUMBER, {"bad": "not a record"})
    client.enqueue(NUMBER, "new", "n1")
    assert conn.hget("rq:v2:quarantine", f"{NUMBER}/bad") == b"earlier|first"
    assert conn.hget("rq:v2:quarantine", f"{NUMBER}/bad#2") == b"record does not parse|not a record"


def test_a_layout_1_record_naming_another_number_is_quarantined(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_layout_1(conn, NUMBER, {"stray": f'0|1|{now_ms}|+14155550199|"x"'})
    client.enqueue(NUMBER, "new", "n1")
    assert conn.exists("rq:msg", "rq:seg") == 0
    why = conn.hget("rq:v2:quarantine", f"{NUMBER}/stray").split(b"|", 1)[0]
    assert why == b"record names another number"


def test_an_expired_layout_1_lease_returns_to_the_head_of_its_converted_queue(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_layout_1(conn, NUMBER, {"m2": f'0|1|{now_ms}|{NUMBER}|"two"'})
    conn.hset("rq:msg", f"{NUMBER}/m1", f'0|1|{now_ms}|{NUMBER}|"one"')
    conn.hset("rq:seg", NUMBER, 2)
    conn.zadd("rq:leases", {f"7:{NUMBER}/m1": now_ms - 1})
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    assert [(m.id, m.attempt) for m in client.dequeue(10, 30)] == [("m1", 1), ("m2", 0)]
    assert conn.exists("rq:seg", "rq:leases", "rq:msg", f"rq:q:{NUMBER}") == 0


def test_a_retry_of_a_message_layout_1_still_leases_unconverted_is_a_duplicate(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    others = put_many_layout_1(conn, 100, now_ms)
    conn.zadd("rq:leases", {f"{i}:{number}/m": now_ms + 10_000 for i, number in enumerate(others)})
    conn.delete("rq:ready")
    for number in others:
        conn.delete(f"rq:q:{number}")
    conn.hset("rq:msg", f"{NUMBER}/v1-1", f'0|1|{now_ms}|{NUMBER}|"old"')
    conn.hset("rq:seg", NUMBER, 1)
    conn.zadd("rq:leases", {f"500:{NUMBER}/v1-1": now_ms + 20_000})  # after the 100 others
    assert client.enqueue(NUMBER, "old", "v1-1").duplicate
    assert conn.zscore("rq:leases", f"500:{NUMBER}/v1-1") is not None  # still layout 1's lease
    with pytest.raises(IdConflict):
        client.enqueue(NUMBER, "changed", "v1-1")


def test_a_layout_1_lease_of_a_message_layout_2_holds_is_not_leased_twice(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    client.enqueue(NUMBER, "same", "both")
    conn.hset("rq:msg", f"{NUMBER}/both", f'0|1|{now_ms}|{NUMBER}|"same"')
    conn.hset("rq:seg", NUMBER, 1)
    conn.zadd("rq:leases", {f"9:{NUMBER}/both": now_ms + 30_000})
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    assert conn.zrange("rq:v2:leases", 0, -1) == []
    assert [m.id for m in client.dequeue(10, 30)] == ["both"]
    assert client.dequeue(10, 30) == []
    assert client.number_info(NUMBER).held_segments == 1


def test_a_touched_number_converts_its_layout_1_queue_without_its_seg_field(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_many_layout_1(conn, 150, now_ms)  # more than one call's share of others
    put_layout_1(conn, NUMBER, {"old": f'0|1|{now_ms}|{NUMBER}|"first"'})
    conn.hdel("rq:seg", NUMBER)
    conn.zadd("rq:ready", {NUMBER: now_ms + 3_600_000})  # last in the others' order
    client.enqueue(NUMBER, "second", "new")
    assert held_ids(conn, NUMBER) == {"old", "new"}
    assert conn.exists(f"rq:q:{NUMBER}") == 0


def test_a_converted_number_keeps_its_layout_1_rate_limit_time(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    now_ms = int(time.time() * 1000)
    put_layout_1(conn, NUMBER, {"old": f'0|1|{now_ms}|{NUMBER}|"first"'})
    conn.set(f"rq:tat:{NUMBER}", now_ms + 60_000, px=60_000)
    client.enqueue(NUMBER, "second", "new")
    assert client.dequeue(10, 30) == []
    assert client.number_info(NUMBER).next_eligible_at > time.time() + 30


def test_a_layout_1_rate_time_set_after_a_numbers_first_layout_2_message_still_limits_it(
    client: RatequeueClient, conn: redis.Redis
) -> None:
    other = "+14155550101"  # converted first: layout 1 code may still run on the shard
    assert client.number_info(other).shard == client.number_info(NUMBER).shard
    put_layout_1(conn, other, {"old": f'0|1|{int(time.time() * 1000)}|{other}|"first"'})
    client.enqueue(other, "second", "new")
    client.enqueue(NUMBER, "first", "n1")  # NUMBER's first message, none of it in layout 1
    # Layout 1's dequeuer then sends a message of NUMBER that layout 1's enqueue had queued:
    conn.set(f"rq:tat:{NUMBER}", int(time.time() * 1000) + 60_000, px=60_000)
    client.enqueue(NUMBER, "second", "n2")
    assert NUMBER not in {m.number for m in client.dequeue(10, 30)}
    assert client.number_info(NUMBER).next_eligible_at > time.time() + 30
