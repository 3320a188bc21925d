"""A corrupted field of a number (a GCRA time, the held count, a queue or lease entry), whether
written by hand or by a bug, must not make a queue script fail after it has written: Redis keeps
a script's earlier writes, so a batch refused with an error would be half stored (its retry then
acknowledged as a duplicate of messages that never reach the ready set), and a dequeue failing
after its LPOP would lose what it popped. Each corrupted value is read as what limits nothing
(a time or count of 0), or an entry that does not parse is set aside in rq:v2:quarantine; every
other message is served as usual. Lua's `tonumber` reads "nan", "inf" and "1e999" as numbers,
which is why they are tried here. Real redis-server processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from ratequeue.client import RatequeueClient
from ratequeue.local_cluster import LocalCluster
from ratequeue.scripts import held_ids
from ratequeue.shard import parse_receipt

NUMBER = "+14155550100"
OTHER = "+14155550101"


def drain(client: RatequeueClient, expected: set[str], seconds: float = 6) -> list[str]:
    """Lease and acknowledge until every expected id was delivered (or the time is up)."""
    delivered: list[str] = []
    deadline = time.monotonic() + seconds
    while not expected <= set(delivered) and time.monotonic() < deadline:
        leased = client.dequeue(100, 30)
        delivered += [m.id for m in leased]
        if leased:
            client.ack([m.receipt for m in leased])
        else:
            time.sleep(0.05)
    return delivered


@pytest.fixture
def shard(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return start_cluster(shards=1, replicas=1)


@pytest.fixture
def client(shard: LocalCluster, make_client: Callable[..., RatequeueClient]) -> RatequeueClient:
    return make_client(shard)


def primary(cluster: LocalCluster) -> redis.Redis:
    return cluster.shards[0].primary.client()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("where", ["layout 1's time", "the number's hash"])
def test_an_enqueue_reads_a_time_that_is_not_a_finite_number_as_no_limit(
    shard: LocalCluster, client: RatequeueClient, where: str, value: str
) -> None:
    cluster = shard
    with primary(cluster) as conn:
        if where == "layout 1's time":
            conn.set(f"rq:tat:{NUMBER}", value)
        else:  # a number that holds nothing: only its expiring GCRA time is left
            conn.hset(f"rq:v2:n:{NUMBER}", "t", value)
            conn.pexpire(f"rq:v2:n:{NUMBER}", 60_000)
        assert client.enqueue(NUMBER, "hello", "m-1").duplicate is False
        assert held_ids(conn, NUMBER) == {"m-1"}
        assert conn.zscore("rq:v2:ready", NUMBER) is not None
    assert drain(client, {"m-1"}) == ["m-1"]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_dequeue_serves_a_number_whose_time_is_not_a_finite_number_and_every_other(
    shard: LocalCluster, client: RatequeueClient, value: str
) -> None:
    cluster = shard
    for k in range(3):
        client.enqueue(NUMBER, f"a{k}", f"a{k}")
        client.enqueue(OTHER, f"b{k}", f"b{k}")
    with primary(cluster) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", "t", value)
    expected = {"a0", "a1", "a2", "b0", "b1", "b2"}
    assert set(drain(client, expected, seconds=10)) == expected


def test_an_expired_lease_of_a_number_whose_time_is_not_a_number_goes_back_to_its_queue(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    cluster = shard
    client.enqueue(NUMBER, "a0", "a0")
    assert [m.id for m in client.dequeue(10, 1)] == ["a0"]  # leased for 1 s, never acked
    with primary(cluster) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", "t", "nan")
    time.sleep(1.1)
    assert drain(client, {"a0"}) == ["a0"]


def test_an_ack_counts_down_a_held_count_that_is_not_a_number_from_zero(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    cluster = shard
    client.enqueue(NUMBER, "a0", "a0")
    client.enqueue(NUMBER, "a1", "a1")
    with primary(cluster) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", "s", "garbage")
        leased = client.dequeue(1, 30)
        assert client.ack([m.receipt for m in leased]) == 1
        assert conn.hget(f"rq:v2:n:{NUMBER}", "s") == b"0"
        assert held_ids(conn, NUMBER) == {"a1"}
    assert drain(client, {"a1"}) == ["a1"]


def test_a_queue_entry_that_does_not_parse_is_set_aside_and_the_next_one_served(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    cluster = shard
    client.enqueue(NUMBER, "a1", "a1")
    with primary(cluster) as conn:
        conn.lpush(f"rq:v2:q:{NUMBER}", "not an entry")
        assert drain(client, {"a1"}) == ["a1"]
        assert conn.hgetall("rq:v2:quarantine") == {
            f"rq:v2:q:{NUMBER}".encode(): b"queue entry does not parse|not an entry"
        }


def test_a_leased_entry_that_does_not_parse_is_acknowledged_and_set_aside(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    cluster = shard
    client.enqueue(NUMBER, "a0", "a0")
    client.enqueue(NUMBER, "a1", "a1")
    leased = client.dequeue(1, 30)
    seq = parse_receipt(leased[0].receipt)[1].split(":", 1)[0]
    with primary(cluster) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", seq, "not an entry")
        assert client.ack([m.receipt for m in leased]) == 1
        assert conn.hgetall("rq:v2:quarantine") == {
            f"{seq}:{NUMBER}".encode(): b"leased entry does not parse|not an entry"
        }
    assert drain(client, {"a1"}) == ["a1"]


def test_a_queue_entry_set_aside_is_no_longer_held_so_its_id_can_be_sent_again(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_number_segments=1)  # the bad entry filled the number
    client.enqueue(NUMBER, "a", "a1")
    with primary(cluster) as conn:
        conn.lset(f"rq:v2:q:{NUMBER}", 0, 'x|1|a1|"a"')  # its attempt is not a number
        assert drain(client, {"never"}, seconds=0.5) == []
        assert conn.get("rq:v2:count") is None and held_ids(conn, NUMBER) == set()
        assert client.enqueue(NUMBER, "a", "a1").duplicate is False
    assert drain(client, {"a1"}) == ["a1"]


@pytest.mark.parametrize("when", ["acknowledged", "its lease expired"])
def test_a_leased_entry_set_aside_frees_the_id_its_lease_names(
    start_cluster: Callable[..., LocalCluster],
    make_client: Callable[..., RatequeueClient],
    when: str,
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_number_segments=1)
    client.enqueue(NUMBER, "a", "a1")
    leased = client.dequeue(1, 1 if when == "its lease expired" else 30)
    seq = parse_receipt(leased[0].receipt)[1].split(":", 1)[0]
    with primary(cluster) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", seq, "not an entry")
        if when == "acknowledged":
            assert client.ack([m.receipt for m in leased]) == 1
        else:
            time.sleep(1.1)
            assert client.dequeue(10, 30) == []
        assert conn.get("rq:v2:count") is None and held_ids(conn, NUMBER) == set()
        assert client.enqueue(NUMBER, "a", "a1").duplicate is False
    assert drain(client, {"a1"}) == ["a1"]


def test_many_bad_entries_are_set_aside_at_most_max_a_call_each_under_its_own_name(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    client.enqueue(NUMBER, "a", "a1")
    with primary(shard) as conn:
        conn.lpush(f"rq:v2:q:{NUMBER}", *[f"bad {k}" for k in range(30)])
        assert client.dequeue(10, 30) == []
        assert conn.hlen("rq:v2:quarantine") == 10
        assert conn.get("rq:v2:count") == b"1"  # entries that name no held id free nothing
        assert conn.hget(f"rq:v2:n:{NUMBER}", "s") == b"1"
        assert conn.llen(f"rq:v2:q:{NUMBER}") == 21
        assert drain(client, {"a1"}) == ["a1"]
        assert sorted(v.split(b"|", 1)[1] for v in conn.hvals("rq:v2:quarantine")) == sorted(
            f"bad {k}".encode() for k in range(30)
        )


def test_an_enqueue_finding_a_queue_of_another_type_writes_nothing_of_its_batch(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    with primary(shard) as conn:
        conn.set(f"rq:v2:q:{OTHER}", "not a list")
        results = client.enqueue_many([client.prepare(NUMBER, "a", "a1"),
                                       client.prepare(OTHER, "b", "b1")])  # fmt: skip
        assert [type(r).__name__ for r in results] == ["ShardScriptFailed"] * 2
        assert conn.keys("rq:v2:n:*") == [] and conn.exists(f"rq:v2:q:{NUMBER}") == 0


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [("rq:lease_seq", "garbage", "dequeue"), ("rq:v2:count", "1.5", "enqueue"),
     ("rq:v2:count", "1.5", "dequeue"), ("rq:barrier", "x", "enqueue"),
     ("rq:lease_seq", str(2**53), "dequeue"),  # past what a lease number counts exactly
     ("rq:v2:ready", "not a zset", "enqueue"), ("rq:v2:ready", "not a zset", "dequeue"),
     ("rq:v2:quarantine", "not a hash", "dequeue")],
)  # fmt: skip
def test_a_shared_key_that_is_corrupt_refuses_the_calls_writing_it_with_nothing_written(
    shard: LocalCluster, client: RatequeueClient, key: str, value: str, refused: str
) -> None:
    client.enqueue(NUMBER, "a", "a1")
    call = {"enqueue": lambda: client.enqueue(NUMBER, "b", "b1"),
            "dequeue": lambda: client.dequeue(10, 30)}[refused]  # fmt: skip
    with primary(shard) as conn:
        before = {k: conn.dump(k) for k in conn.keys("rq:v2:[nq]:*")}
        saved = conn.dump(key)
        conn.set(key, value)
        with pytest.raises(Exception, match=f"CORRUPTKEY {key}"):
            call()
        assert {k: conn.dump(k) for k in conn.keys("rq:v2:[nq]:*")} == before
        conn.delete(key)
        if saved is not None:  # as it was, so the queue goes on
            conn.restore(key, 0, saved)
    assert drain(client, {"a1"}) == ["a1"]


def test_a_number_whose_state_is_of_another_type_is_set_aside_and_the_others_served(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    client.enqueue(NUMBER, "a", "a1")
    client.enqueue(OTHER, "b", "b1")
    with primary(shard) as conn:
        conn.delete(f"rq:v2:n:{NUMBER}")
        conn.set(f"rq:v2:n:{NUMBER}", "not a hash")
        assert drain(client, {"b1"}) == ["b1"]
        assert conn.lrange(f"rq:v2:q:{NUMBER}", 0, -1) != []  # kept where it was
        assert conn.zscore("rq:v2:ready", NUMBER) is None
        [why] = conn.hvals("rq:v2:quarantine")
        assert why.startswith(b"a key of the number is not of its type|")


def test_an_ack_releases_a_number_whose_time_is_far_beyond_any_expiry(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    client.enqueue(NUMBER, "a", "a1")
    leased = client.dequeue(1, 30)
    with primary(shard) as conn:
        conn.hset(f"rq:v2:n:{NUMBER}", "t", "1e300")
        assert client.ack([m.receipt for m in leased]) == 1
        assert conn.get("rq:v2:count") is None and conn.zcard("rq:v2:leases") == 0
        assert 0 < conn.pttl(f"rq:v2:n:{NUMBER}") <= 10**12


def test_an_expired_lease_whose_queue_is_of_another_type_is_set_aside_whole(
    shard: LocalCluster, client: RatequeueClient
) -> None:
    client.enqueue(NUMBER, "a", "a1")
    leased = client.dequeue(1, 1)
    seq = parse_receipt(leased[0].receipt)[1].split(":", 1)[0]
    with primary(shard) as conn:
        entry = conn.hget(f"rq:v2:n:{NUMBER}", seq)
        conn.set(f"rq:v2:q:{NUMBER}", "not a list")
        time.sleep(1.1)
        assert client.dequeue(10, 30) == []
        assert conn.hvals("rq:v2:quarantine") == [b"its queue is not a list|" + entry]
        state = conn.hgetall(f"rq:v2:n:{NUMBER}")
        assert conn.get("rq:v2:count") is None and seq.encode() not in state
        assert b"@a1" not in state
