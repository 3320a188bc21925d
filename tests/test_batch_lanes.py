"""`POST /v1/messages:batch` through the group commit's per-shard lanes (`ratequeue.coalescing`),
over real HTTP and real redis-server shards: a batch goes out in scripts of at most `MAX_BATCH`
lines, and the messages of a batch that find their shard's backlog full are refused with 503
`enqueue_backlog_full`, nothing of them written, while the others are queued."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import redis

from ratequeue.coalescing import MAX_BATCH, MAX_IN_FLIGHT, MAX_PENDING
from ratequeue.local_cluster import LocalCluster
from ratequeue.slots import slot_for
from tests.group_commit.support import held_ids, wait_for
from tests.prometheus_samples import metric_samples
from tests.test_http_api import ON_S0

BATCH = "/v1/messages:batch"


def script_calls(conn: redis.Redis) -> int:
    return int(conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


# Numbers on s0 of two shards, one per message of a full backlog: a number's messages never
# travel in two scripts at once, so scripts that go out together carry different numbers.
S0_NUMBERS = [n for n in (f"+1415{i:07d}" for i in range(8 * MAX_PENDING)) if slot_for(n) < 8192]


def on_s0(prefix: str, count: int) -> list[dict]:
    return [{"number": S0_NUMBERS[i], "id": f"{prefix}-{i}", "body": "x"} for i in range(count)]


def test_a_batch_larger_than_max_batch_goes_out_in_several_scripts(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_queue_seconds=1_000_000)
    count = 2 * MAX_BATCH + 1
    with (
        cluster.shard("s0").primary.client() as conn,
        httpx.Client(base_url=api.url, timeout=30) as http,
    ):
        before = script_calls(conn)
        response = http.post(BATCH, json={"messages": on_s0("m", count)})
        after = script_calls(conn)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [201] * count
    assert after - before >= 3  # ceil(513 / 256) scripts; one script per shard before


def test_a_batch_past_the_shard_s_backlog_gets_503_for_what_was_not_admitted_nothing_written(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    # WAIT's socket deadline (wait_timeout_ms + 1 s) outlasts the writes' pause on the primary.
    api = serve_api(cluster, max_queue_seconds=1_000_000, max_batch=MAX_PENDING,
                    wait_timeout_ms=30_000)  # fmt: skip
    answers: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            answers[name] = http.post(BATCH, json={"messages": on_s0(name, MAX_PENDING)})

    with cluster.shard("s0").primary.client() as conn:
        # The shard holds its scripts: the first batch fills the lane (MAX_IN_FLIGHT scripts on
        # their way, the rest waiting); the pause ends by itself once the second has been read.
        conn.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        try:
            first = threading.Thread(target=send, args=("a",))
            first.start()
            wait_for(
                "the first batch's scripts held",
                lambda: conn.info("clients")["blocked_clients"] >= MAX_IN_FLIGHT,
            )
            second = threading.Thread(target=send, args=("b",))
            second.start()
            first.join(60)
            second.join(60)
        finally:
            conn.execute_command("CLIENT", "UNPAUSE")
        assert [r["status"] for r in answers["a"].json()["results"]] == [201] * MAX_PENDING
        results = answers["b"].json()["results"]
        # The lane had room for what the first batch's scripts took out of it.
        admitted = MAX_IN_FLIGHT * MAX_BATCH
        refused = results[admitted:]
        assert [r["status"] for r in results[:admitted]] == [201] * admitted
        assert {(r["status"], r["error"]["code"]) for r in refused} == {
            (503, "enqueue_backlog_full")
        }
        assert answers["b"].headers["retry-after"] == "1"
    held = held_ids(cluster.shard("s0").primary)
    assert set(held) == {f"a-{i}" for i in range(MAX_PENDING)} | {f"b-{i}" for i in range(admitted)}
    counted = metric_samples(httpx.get(f"{api.url}/metrics", timeout=10).text)
    # Refused in the API, never sent: counted as such, not as the shard's failure.
    assert counted[("ratequeue_enqueue_total", (("outcome", "backlog_full"),))] == len(refused)
    assert ("ratequeue_enqueue_total", (("outcome", "unavailable"),)) not in counted


def test_a_batch_larger_than_max_batch_queues_each_numbers_messages_in_its_order(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    # Four numbers of s0, their messages interleaved: five scripts' worth, up to four of a shard
    # on their way at once, yet each number's messages leave in the batch's order.
    numbers = [ON_S0, "+14155550101", "+14155550104", "+14155550105"]  # all on s0
    api = serve_api(cluster, max_queue_seconds=1_000_000, max_batch=MAX_PENDING)
    count = 4 * MAX_BATCH + 24
    messages = [{"number": numbers[i % 4], "id": f"m-{i}", "body": "x"} for i in range(count)]
    with httpx.Client(base_url=api.url, timeout=30) as http:
        for number in numbers:
            rate = {"per_second": 100_000, "burst": 1000}
            assert http.put(f"/v1/numbers/{number}/rate", json=rate).status_code == 200
        response = http.post(BATCH, json={"messages": messages})
        assert response.status_code == 200, response.text
        assert [r["status"] for r in response.json()["results"]] == [201] * count
        assert {r["shard"] for r in response.json()["results"]} == {"s0"}
        delivered: dict[str, list[int]] = {number: [] for number in numbers}
        while sum(map(len, delivered.values())) < count:
            leased = http.post("/v1/messages:dequeue", json={"max": 1000, "lease_seconds": 60})
            for message in leased.json()["messages"]:
                delivered[message["number"]].append(int(message["id"].removeprefix("m-")))
    for number in numbers:
        assert delivered[number] == sorted(delivered[number]), number
