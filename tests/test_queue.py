"""Queue behaviour on real redis-server shards, through the Python client."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import pytest
import redis

from ratequeue.client import Enqueued, RatequeueClient
from ratequeue.errors import IdConflict, InvalidInput, QueueFull
from ratequeue.local_cluster import LocalCluster
from ratequeue.rates import Rate
from ratequeue.scripts import READY_KEY, held_ids, state_key

NUMBER = "+14155550100"


def drain(
    client: RatequeueClient, count: int, seconds: float = 10, max_messages: int = 100
) -> list:
    """Dequeue and ack until `count` messages came (or `seconds` passed: a deadline, not a
    measure); returns (time, message) pairs in delivery order."""
    got: list = []
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        leased = client.dequeue(max_messages, 30)
        now = time.monotonic()
        got += [(now, m) for m in leased]
        if leased:
            client.ack([m.receipt for m in leased])
        else:
            time.sleep(0.005)
    return got


def test_an_enqueue_retried_with_the_same_id_is_queued_once(client: RatequeueClient) -> None:
    first = client.enqueue(NUMBER, "hello", "order-1")
    again = client.enqueue(NUMBER, "hello", "order-1")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert client.number_info(NUMBER).depth == 1


def test_an_acked_id_enqueued_again_within_the_dedup_window_is_not_requeued(
    client: RatequeueClient,
) -> None:
    client.enqueue(NUMBER, "hello", "order-2")
    leased = client.dequeue(10, 30)
    assert client.ack([m.receipt for m in leased]) == 1
    assert client.enqueue(NUMBER, "hello", "order-2").duplicate
    assert client.number_info(NUMBER).depth == 0


def queue_two_fast(client: RatequeueClient) -> None:
    """Messages `a` then `b` on NUMBER, whose rate (1,000/s, burst 10) holds neither back."""
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    client.enqueue(NUMBER, "first", "a")
    client.enqueue(NUMBER, "second", "b")


def test_an_id_reused_for_another_body_of_the_same_number_is_refused_as_a_conflict(
    client: RatequeueClient,
) -> None:
    client.enqueue(NUMBER, "hello", "order-3")
    with pytest.raises(IdConflict, match="order-3"):
        client.enqueue(NUMBER, "goodbye", "order-3")
    [message] = client.dequeue(10, 30)
    assert (message.id, message.body) == ("order-3", "hello")


def test_an_acked_id_reused_for_another_body_within_the_dedup_window_is_a_conflict(
    client: RatequeueClient,
) -> None:
    client.enqueue(NUMBER, "hello", "order-4")
    assert client.ack([m.receipt for m in client.dequeue(10, 30)]) == 1
    with pytest.raises(IdConflict):
        client.enqueue(NUMBER, "goodbye", "order-4")
    assert client.number_info(NUMBER).depth == 0


def test_the_same_id_for_two_numbers_names_two_messages(client: RatequeueClient) -> None:
    other = "+14155550101"
    assert client.number_info(other).shard == client.number_info(NUMBER).shard  # one key space
    assert not client.enqueue(NUMBER, "to the first", "shared-id").duplicate
    assert not client.enqueue(other, "to the second", "shared-id").duplicate
    leased = client.dequeue(10, 30)
    assert sorted((m.number, m.body) for m in leased) == [
        (NUMBER, "to the first"),
        (other, "to the second"),
    ]
    assert client.ack([m.receipt for m in leased]) == 2


def test_a_message_queued_before_ids_were_per_number_is_still_delivered_and_acked(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    shard = client.number_info(NUMBER).shard
    with cluster.shard(shard).primary.client() as conn:  # the layout before: keyed by bare id
        conn.hset("rq:msg", "old-1", f'0|1|{int(time.time() * 1000)}|{NUMBER}|"from before"')
        conn.hset("rq:seg", NUMBER, 1)
        conn.rpush(f"rq:q:{NUMBER}", "old-1")
        conn.zadd("rq:ready", {NUMBER: 0})
    [message] = client.dequeue(10, 30)
    assert (message.id, message.body) == ("old-1", "from before")
    assert client.ack([message.receipt]) == 1
    assert client.number_info(NUMBER).held_segments == 0


def test_a_retry_across_the_upgrade_of_a_message_queued_under_the_old_layout_is_a_duplicate(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    shard = client.number_info(NUMBER).shard
    with cluster.shard(shard).primary.client() as conn:
        conn.hset("rq:msg", "old-2", f'0|1|{int(time.time() * 1000)}|{NUMBER}|"from before"')
        conn.hset("rq:seg", NUMBER, 1)
        conn.rpush(f"rq:q:{NUMBER}", "old-2")
        conn.zadd("rq:ready", {NUMBER: 0})
    assert client.enqueue(NUMBER, "from before", "old-2").duplicate
    with pytest.raises(IdConflict):
        client.enqueue(NUMBER, "something else", "old-2")
    assert [m.id for m in client.dequeue(10, 30)] == ["old-2"]


def test_a_message_leased_under_layout_1_is_acknowledged_by_its_receipt_after_the_upgrade(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    shard = client.number_info(NUMBER).shard
    now_ms = int(time.time() * 1000)
    with cluster.shard(shard).primary.client() as conn:  # layout 1: record in rq:msg, leased
        conn.hset("rq:msg", f"{NUMBER}/old-4", f'0|1|{now_ms}|{NUMBER}|"leased before"')
        conn.hset("rq:seg", NUMBER, 1)
        conn.zadd("rq:leases", {f"7:{NUMBER}/old-4": now_ms + 30_000})
    assert client.ack([f"{shard}:7:{NUMBER}/old-4"]) == 1
    assert client.number_info(NUMBER).held_segments == 0
    with cluster.shard(shard).primary.client() as conn:
        assert not conn.exists("rq:msg", "rq:seg", "rq:msg:unreferenced")


def test_an_id_the_old_layout_remembered_is_queued_again_rather_than_lost(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    # The old sets knew ids per shard only: another number's message under that id must not be
    # taken for a retry (a lost message); a real retry is delivered twice at worst.
    shard = client.number_info(NUMBER).shard
    window = int(time.time() // 3600)
    with cluster.shard(shard).primary.client() as conn:
        conn.sadd(f"rq:ids:{window}", "old-3")
    assert not client.enqueue(NUMBER, "hello", "old-3").duplicate
    assert client.number_info(NUMBER).depth == 1


def test_a_queue_that_empties_leaves_no_keys_behind(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    for i in range(3):
        client.enqueue(NUMBER, f"m{i}", f"k{i}")
    delivered = drain(client, 3)
    assert len(delivered) == 3

    def leftovers() -> list[bytes]:
        keys = []
        for shard in cluster.shards:
            with shard.primary.client() as conn:
                keys += [k for k in conn.scan_iter() if b"14155550100" in k]
                assert conn.zscore(READY_KEY, NUMBER) is None
        return keys

    # The number's state expires once its GCRA time no longer limits (a few ms here).
    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leftovers() == []


def test_a_number_given_a_message_while_its_rate_still_limits_it_keeps_its_state(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    client.set_rate(NUMBER, Rate(per_second=0.01, burst=1))
    client.enqueue(NUMBER, "first", "p1")
    assert client.ack([m.receipt for m in client.dequeue(1, 30)]) == 1
    shard = cluster.shard(client.number_info(NUMBER).shard)
    with shard.primary.client() as conn:
        # Emptied: its state now lives only until its GCRA time (100 s ahead) no longer limits.
        assert conn.pttl(state_key(NUMBER)) > 0
        client.enqueue(NUMBER, "second", "p2")
        assert conn.pttl(state_key(NUMBER)) == -1  # kept for as long as it holds a message
    assert client.number_info(NUMBER).held_segments == 1


def test_messages_of_one_number_leave_in_order_one_per_interval(client: RatequeueClient) -> None:
    client.set_rate(NUMBER, Rate(per_second=10, burst=1))
    for i in range(5):
        client.enqueue(NUMBER, f"m{i}", f"o{i}")
    delivered = drain(client, 5)
    assert [m.id for _, m in delivered] == [f"o{i}" for i in range(5)]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(delivered)]
    assert min(gaps) >= 0.1 - 0.02


def test_a_three_segment_message_takes_three_intervals_of_its_number(
    client: RatequeueClient,
) -> None:
    client.set_rate(NUMBER, Rate(per_second=10, burst=1))
    client.enqueue(NUMBER, "a" * 400, "long")  # 400 GSM-7 characters: 3 segments
    client.enqueue(NUMBER, "short", "next")
    delivered = drain(client, 2)
    assert [m.id for _, m in delivered] == ["long", "next"]
    assert delivered[1][0] - delivered[0][0] >= 0.3 - 0.03


def test_a_dequeue_serves_every_due_number_before_any_number_twice(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(start_cluster(shards=1, replicas=1))
    numbers = [f"2000{i}" for i in range(5)]  # short codes: 100/s, burst 100
    for number in numbers:
        for i in range(10):
            client.enqueue(number, "x", f"{number}-{i}")
    leased = client.dequeue(5, 30)
    assert sorted(m.number for m in leased) == sorted(numbers)


def test_an_expired_lease_returns_the_message_to_the_head_with_attempt_plus_one(
    client: RatequeueClient,
) -> None:
    queue_two_fast(client)
    leased = client.dequeue(1, 0.2)
    assert [(m.id, m.attempt) for m in leased] == [("a", 0)]
    time.sleep(0.25)
    again = client.dequeue(1, 30)
    assert [(m.id, m.attempt) for m in again] == [("a", 1)]


def test_a_receipt_of_an_expired_lease_acknowledges_nothing(client: RatequeueClient) -> None:
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    client.enqueue(NUMBER, "first", "a")
    stale = client.dequeue(1, 0.1)
    time.sleep(0.15)
    fresh = client.dequeue(1, 30)
    assert client.ack([stale[0].receipt]) == 0
    assert client.ack([fresh[0].receipt]) == 1
    assert client.dequeue(10, 30) == []


def test_an_expired_lease_acknowledges_nothing_even_before_any_dequeue_returns_it(
    client: RatequeueClient,
) -> None:
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    client.enqueue(NUMBER, "first", "a")
    stale = client.dequeue(1, 0.1)
    time.sleep(0.15)
    assert client.ack([stale[0].receipt]) == 0
    assert [(m.id, m.attempt) for m in client.dequeue(1, 30)] == [("a", 1)]


def test_a_receipt_holding_whitespace_acknowledges_nothing_not_even_the_leases_it_spells(
    client: RatequeueClient,
) -> None:
    queue_two_fast(client)
    first, second = client.dequeue(2, 30)
    lease_of_second = second.receipt.split(":", 1)[1]
    assert client.ack([f"{first.receipt} {lease_of_second}"]) == 0
    assert client.ack([first.receipt, second.receipt]) == 2


def test_a_full_queue_refuses_with_a_reason_and_writes_nothing(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(cluster, max_queue_seconds=3)  # 3 s of a 1/s long code: 3 segments
    client.enqueue(NUMBER, "a" * 300, "two-segments")
    with pytest.raises(QueueFull, match="exceed its limit of 3"):
        client.enqueue(NUMBER, "a" * 300, "another-two")
    assert client.number_info(NUMBER).depth == 1
    assert client.enqueue(NUMBER, "one", "one-more").duplicate is False


def test_default_rates_follow_the_number_type(client: RatequeueClient) -> None:
    assert client.number_info("+14155550100").rate == Rate(per_second=1, burst=1)
    assert client.number_info("+18005550100").rate == Rate(per_second=3, burst=3)
    assert client.number_info("12345").rate == Rate(per_second=100, burst=100)


def test_a_rate_override_replaces_the_default_for_that_number(client: RatequeueClient) -> None:
    client.set_rate(NUMBER, Rate(per_second=7, burst=2))
    info = client.number_info(NUMBER)
    assert (info.rate, info.rate_source) == (Rate(per_second=7, burst=2), "override")
    assert info.capacity_segments == 7 * 36_000


def test_a_receipt_named_twice_in_one_ack_acknowledges_its_message_once_and_keeps_the_others(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    queue_two_fast(client)
    first, second = client.dequeue(2, 30)
    assert client.ack([first.receipt, first.receipt]) == 1
    assert client.number_info(NUMBER).held_segments == 1
    with cluster.shard(second.shard).primary.client() as conn:
        assert held_ids(conn, NUMBER) == {second.id}
    assert client.ack([first.receipt]) == 0
    assert client.ack([second.receipt]) == 1
    assert client.number_info(NUMBER).held_segments == 0


def test_a_message_held_longer_than_the_dedup_window_is_still_queued_once_by_its_id(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(cluster, dedup_window_seconds=1)
    client.set_rate(NUMBER, Rate(per_second=0.01, burst=1))
    client.enqueue(NUMBER, "first", "in-front")  # sent now: "held" waits 100 s behind it
    client.ack([m.receipt for m in client.dequeue(1, 30)])
    client.enqueue(NUMBER, "hello", "held")
    time.sleep(2.1)  # two dedup windows: whatever a window remembered has expired
    assert client.enqueue(NUMBER, "hello", "held").duplicate
    with pytest.raises(IdConflict, match="held"):
        client.enqueue(NUMBER, "goodbye", "held")
    assert client.number_info(NUMBER).depth == 1


def test_the_gcra_time_keeps_fractions_of_a_millisecond(
    client: RatequeueClient, cluster: LocalCluster
) -> None:
    client.set_rate(NUMBER, Rate(per_second=3, burst=1))  # 333.33... ms per segment
    client.enqueue(NUMBER, "x", "third")
    [message] = client.dequeue(1, 30)
    with cluster.shard(message.shard).primary.client() as conn:
        tat = conn.hget(state_key(NUMBER), "t").decode()
    # The shard's clock is in whole ms, so the time is now + 333.33... ms: its fraction is cut
    # only at the double's precision (4 digits at 13 integer digits), not at 3.
    whole, fraction = tat.split(".")
    assert len(whole) == 13 and fraction.startswith("333") and len(fraction) > 3


def test_a_message_no_batch_line_can_carry_is_refused_alone_and_its_batch_neighbours_queued(
    client: RatequeueClient,
) -> None:
    # Built by hand (prepare refuses such ids): in one script call with other callers' messages
    # (the API's group commit), it must not shift or break their answers.
    first, last = client.prepare(NUMBER, "one", "g1"), client.prepare(NUMBER, "two", "g2")
    bad_id = dataclasses.replace(first, id="evil\n")
    piped_id = dataclasses.replace(first, id="a|b")
    raw_newline = dataclasses.replace(first, id="g3", body_json='"a\nb"')
    results = client.enqueue_many([first, bad_id, piped_id, raw_newline, last])
    assert [type(r).__name__ for r in results] == [
        "Enqueued", "InvalidInput", "InvalidInput", "InvalidInput", "Enqueued"
    ]  # fmt: skip
    assert client.number_info(NUMBER).depth == 2


def test_an_id_ending_in_a_newline_is_refused_before_it_is_sent(client: RatequeueClient) -> None:
    with pytest.raises(InvalidInput, match="id must be"):
        client.enqueue(NUMBER, "x", "tail\n")
    assert client.number_info(NUMBER).depth == 0


def answer(result: object) -> str:
    """What a batch said of one message: "new", "duplicate", or the error and its text."""
    if isinstance(result, Enqueued):
        return "duplicate" if result.duplicate else "new"
    return f"{type(result).__name__}: {result}"


def test_one_batch_answers_each_message_by_what_its_number_holds_and_what_came_before_it(
    client: RatequeueClient,
) -> None:
    other = "+14155550101"
    assert client.number_info(other).shard == client.number_info(NUMBER).shard  # one call
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    client.enqueue(NUMBER, "delivered", "acked-1")
    client.enqueue(NUMBER, "held", "held-1")
    leased = {m.id: m for m in client.dequeue(10, 30)}
    assert client.ack([leased["acked-1"].receipt]) == 1  # held-1 stays leased: still held
    batch = [
        (NUMBER, "held", "held-1"),  # held: a retry
        (NUMBER, "other", "held-1"),  # held under another body
        (NUMBER, "delivered", "acked-1"),  # delivered within the dedup window: a retry
        (NUMBER, "changed", "acked-1"),  # delivered under another body
        (NUMBER, "new", "new-1"),
        (NUMBER, "new", "new-1"),  # a retry within the batch
        (NUMBER, "newer", "new-1"),  # the batch's earlier message under another body
        (other, "held", "held-1"),  # another number's id space
    ]
    answers = [answer(r) for r in client.enqueue_many(client.prepare(*m) for m in batch)]
    assert [a.split(":")[0] for a in answers] == [
        "duplicate", "IdConflict", "duplicate", "IdConflict", "new", "duplicate", "IdConflict",
        "new",
    ]  # fmt: skip
    # Each refusal names its own message's id.
    refusals = {k: answers[k] for k in (1, 3, 6)}
    assert "id held-1 " in refusals[1] and "id acked-1 " in refusals[3], refusals
    assert "id new-1 " in refusals[6], refusals
    assert (client.number_info(NUMBER).depth, client.number_info(other).depth) == (1, 1)


def test_a_retry_in_a_batch_of_a_message_delivered_in_the_previous_dedup_window_is_a_duplicate(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    client = make_client(cluster, dedup_window_seconds=1)
    client.enqueue(NUMBER, "hello", "before")
    [message] = client.dequeue(1, 30)
    with cluster.shard(message.shard).primary.client() as conn:

        def into_the_next_window() -> None:  # windows are whole seconds of the shard's clock
            _, micros = conn.time()
            time.sleep(1 - micros / 1e6 + 0.05)

        if conn.time()[1] > 800_000:
            into_the_next_window()  # acknowledged well inside one window
        assert client.ack([message.receipt]) == 1
        into_the_next_window()
    results = client.enqueue_many(
        [client.prepare(NUMBER, "hello", "before"), client.prepare(NUMBER, "bye", "before")]
    )
    assert [answer(r).split(":")[0] for r in results] == ["duplicate", "IdConflict"]
    assert client.number_info(NUMBER).depth == 0


def test_a_batch_of_more_messages_for_one_number_than_one_redis_call_takes_is_queued_once(
    cluster: LocalCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    # Over 4,000 fields of one number's hash are read in more than one call (Lua's stack), in
    # one script call.
    client = make_client(cluster, max_messages_per_call=5_000)
    client.set_rate(NUMBER, Rate(per_second=1000, burst=10))
    batch = [client.prepare(NUMBER, f"body {i}", f"big-{i}") for i in range(4_500)]
    assert {answer(r) for r in client.enqueue_many(batch)} == {"new"}
    assert {answer(r) for r in client.enqueue_many(batch)} == {"duplicate"}
    assert client.number_info(NUMBER).depth == 4_500


def enqueue_script_calls(conn: redis.Redis) -> int:
    return int(conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_shards_share_larger_than_one_call_takes_goes_as_several_calls_in_order(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_messages_per_call=10)
    client.set_rate(NUMBER, Rate(per_second=1000, burst=100))
    with cluster.shards[0].primary.client() as conn:
        before = enqueue_script_calls(conn)
        results = client.enqueue_many(client.prepare(NUMBER, f"m{i}", f"m{i}") for i in range(35))
        assert enqueue_script_calls(conn) - before == 4
    assert {answer(r) for r in results} == {"new"}
    assert [m.id for m in client.dequeue(100, 30)] == [f"m{i}" for i in range(35)]


def test_a_shards_share_of_more_bytes_than_one_call_takes_goes_as_several_calls_in_order(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_bytes_per_call=1000)
    client.set_rate(NUMBER, Rate(per_second=1000, burst=100))
    bodies = ["a" * 400, "b" * 400, "c" * 400, "d" * 2000, "e" * 10]  # as JSON: 402 chars and so on
    with cluster.shards[0].primary.client() as conn:
        before = enqueue_script_calls(conn)
        results = client.enqueue_many(
            client.prepare(NUMBER, b, f"m{i}") for i, b in enumerate(bodies)
        )
        assert enqueue_script_calls(conn) - before == 4  # a and b, c, d alone, e
    assert {answer(r) for r in results} == {"new"}
    assert [m.id for m in client.dequeue(100, 30)] == [f"m{i}" for i in range(5)]


def test_the_bytes_a_call_carries_are_counted_in_utf8_with_each_message_s_id_and_number(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_bytes_per_call=1000)
    client.set_rate(NUMBER, Rate(per_second=1000, burst=100))
    # 102 characters as JSON, 402 bytes: two fit a call of 1,000 bytes with their ids and
    # number, three would not (the characters alone, 306, would have sent all five at once).
    bodies = ["\U0001f600" * 100] * 5
    with cluster.shards[0].primary.client() as conn:
        before = enqueue_script_calls(conn)
        results = client.enqueue_many(
            client.prepare(NUMBER, b, f"m{i}") for i, b in enumerate(bodies)
        )
        assert enqueue_script_calls(conn) - before == 3  # m0 and m1, m2 and m3, m4
    assert {answer(r) for r in results} == {"new"}
    assert [m.id for m in client.dequeue(100, 30)] == [f"m{i}" for i in range(5)]


def test_a_failed_call_answers_the_rest_of_its_shards_share_with_its_error_unsent(
    start_cluster: Callable[..., LocalCluster], make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    client = make_client(cluster, max_messages_per_call=2)
    broken = "+14155550177"
    with cluster.shards[0].primary.client() as conn:
        conn.set(state_key(broken), "not a hash")  # its call fails before writing
        results = client.enqueue_many(
            [
                client.prepare(n, "x", f"m{i}")
                for i, n in enumerate([NUMBER, NUMBER, broken, NUMBER, NUMBER])
            ]
        )
        assert [type(r).__name__ for r in results] == [
            "Enqueued", "Enqueued", "ShardScriptFailed", "ShardScriptFailed", "ShardScriptFailed"
        ]  # fmt: skip
        assert results[3] is results[2] and results[4] is results[2]
        assert held_ids(conn, NUMBER) == {"m0", "m1"}
