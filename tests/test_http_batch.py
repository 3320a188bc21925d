"""`POST /v1/messages:batch` over real HTTP and real redis-server shards: one result per message,
each with its own status; a malformed message refused in its own result; the request refused
whole only when the batch itself is wrong (not an object, no messages, too many, too large).
And a dequeue that fills a whole batch across numbers and shards."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator

import httpx

from ratequeue.local_cluster import LocalCluster
from ratequeue.write_failures import WRITE_FAILURES_KEY
from tests.conftest import shard_key_count
from tests.prometheus_samples import metric_samples
from tests.test_http_api import ON_S0, ON_S0_OTHER, ON_S1, assert_error

BATCH = "/v1/messages:batch"


def batch(http: httpx.Client, *messages: object) -> list[dict]:
    response = http.post(BATCH, json={"messages": list(messages)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(messages)))
    return results


def depth(http: httpx.Client, number: str) -> int:
    return http.get(f"/v1/numbers/{number}").json()["depth"]


def test_a_batch_answers_one_result_per_message_in_order_each_201_with_its_shard(
    http: httpx.Client,
) -> None:
    results = batch(
        http,
        {"number": ON_S0, "id": "a", "body": "to s0"},
        {"number": "(415) 555-0102", "id": "b", "body": {"text": "to s1"}},
        {"number": ON_S0_OTHER, "body": "no id"},
    )
    assert [(r["status"], r["shard"], r["duplicate"]) for r in results] == [
        (201, "s0", False), (201, "s1", False), (201, "s0", False)
    ]  # fmt: skip
    assert [r["id"] for r in results[:2]] == ["a", "b"] and results[2]["id"]
    assert results[1]["number"] == ON_S1  # canonical
    assert (depth(http, ON_S0), depth(http, ON_S1), depth(http, ON_S0_OTHER)) == (1, 1, 1)


def test_a_malformed_message_is_refused_in_its_own_result_naming_its_index_and_field(
    http: httpx.Client,
) -> None:
    results = batch(
        http,
        {"number": ON_S0, "id": "good", "body": "hello"},
        {"number": "not a number", "body": "x"},
        {"number": ON_S0, "id": "no-body"},
        "not an object",
        {"number": ON_S0, "id": "bad id!", "body": "x"},
        {"number": ON_S0, "body": "x", "extra": 1},
    )
    assert [r["status"] for r in results] == [201, 422, 422, 422, 422, 422]
    refused = {r["index"]: (r["error"]["code"], r["error"]["message"]) for r in results[1:]}
    assert refused[1][0] == "invalid_number" and "messages.1.number" in refused[1][1]
    assert "messages.2.body" in refused[2][1]
    assert "messages.3" in refused[3][1] and "JSON object" in refused[3][1]
    assert refused[4][0] == "invalid_id" and "messages.4.id" in refused[4][1]
    assert "messages.5.extra" in refused[5][1]
    assert depth(http, ON_S0) == 1  # the good one is queued, nothing of the others


def test_an_id_reused_in_a_batch_is_a_duplicate_for_the_same_body_and_409_for_another(
    http: httpx.Client,
) -> None:
    results = batch(
        http,
        {"number": ON_S0, "id": "same", "body": "hello"},
        {"number": ON_S0, "id": "same", "body": "hello"},
        {"number": ON_S0, "id": "same", "body": "goodbye"},
        {"number": ON_S1, "id": "same", "body": "goodbye"},  # another number: another message
    )
    assert [r["status"] for r in results] == [201, 201, 409, 201]
    assert [results[0]["duplicate"], results[1]["duplicate"]] == [False, True]
    assert results[2]["error"]["code"] == "id_conflict"
    assert (depth(http, ON_S0), depth(http, ON_S1)) == (1, 1)


def test_messages_that_do_not_fit_their_queue_answer_429_and_the_others_201(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_queue_seconds=3)  # 3 s of a 1/s long code: 3 segments
    with httpx.Client(base_url=api.url, timeout=10) as http:
        results = batch(
            http,
            {"number": ON_S0, "id": "two", "body": "a" * 300},  # 2 segments
            {"number": ON_S0, "id": "two-more", "body": "a" * 300},
            {"number": ON_S0, "id": "one", "body": "fits"},
            {"number": ON_S1, "id": "elsewhere", "body": "a" * 300},
        )
        assert [r["status"] for r in results] == [201, 429, 201, 201]
        assert results[1]["error"]["code"] == "queue_full"
        assert "limit of 3" in results[1]["error"]["message"]
        assert depth(http, ON_S0) == 2


def test_messages_on_a_shard_that_is_down_answer_503_with_retry_after_and_the_others_201(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    cluster.shard("s0").primary.stop()
    response = http.post(BATCH, json={"messages": [
        {"number": ON_S0, "id": "lost-shard", "body": "x"},
        {"number": ON_S1, "id": "fine", "body": "y"},
    ]})  # fmt: skip
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert (first["status"], first["error"]["code"]) == (503, "shard_unavailable")
    assert (second["status"], second["shard"]) == (201, "s1")
    assert int(response.headers["retry-after"]) >= 1


@contextlib.contextmanager
def replicas_paused(cluster: LocalCluster, shard: str) -> Iterator[None]:
    """The shard's replicas stopped (SIGSTOP): its writes go through, no WAIT is met."""
    replicas = cluster.shard(shard).replicas
    for replica in replicas:
        replica.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for replica in replicas:
            replica.signal(signal.SIGCONT)


def test_a_503_to_a_message_without_an_id_names_the_id_made_up_and_a_retry_with_it_queues_once(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, wait_timeout_ms=200, retry_deadline=0)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        with replicas_paused(cluster, "s0"):
            [first] = batch(http, {"number": ON_S0, "body": "hello"})
        assert (first["status"], first["number"]) == (503, ON_S0)  # on the primary, not confirmed
        [retried] = batch(http, {"number": ON_S0, "id": first["id"], "body": "hello"})
        assert (retried["status"], retried["duplicate"]) == (201, True)
        assert depth(http, ON_S0) == 1


def test_a_503_to_a_single_enqueue_without_an_id_names_the_id_to_retry_with(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, wait_timeout_ms=200, retry_deadline=0)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        with replicas_paused(cluster, "s0"):
            refused = http.post(f"/v1/numbers/{ON_S0}/messages", json={"body": "hello"})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "durability_not_met"
        message_id = refused.json()["id"]
        retried = http.post(
            f"/v1/numbers/{ON_S0}/messages", json={"id": message_id, "body": "hello"}
        )
        assert (retried.status_code, retried.json()["duplicate"]) == (201, True)
        assert depth(http, ON_S0) == 1


def test_a_shard_refusing_the_call_answers_its_own_messages_503_and_the_others_keep_their_201(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    with cluster.shard("s1").primary.client() as conn:
        conn.set("rq:barrier", "not a counter")  # s1's script refuses every call
    response = http.post(BATCH, json={"messages": [
        {"number": ON_S0, "body": "to s0"},
        {"number": ON_S1, "id": "to-s1", "body": "to s1"},
    ]})  # fmt: skip
    assert response.status_code == 200, response.text
    queued, refused = response.json()["results"]
    assert (queued["status"], queued["shard"]) == (201, "s0")
    assert (refused["status"], refused["error"]["code"]) == (503, "backend_unavailable")
    assert (refused["id"], refused["number"]) == ("to-s1", ON_S1)
    assert "CORRUPTKEY rq:barrier" in refused["error"]["message"]
    assert int(response.headers["retry-after"]) >= 1
    # Told to the controllers' shard watch as a failing write of s1, as a single enqueue is.
    with cluster.control.client() as control:
        deadline = time.monotonic() + 5
        while not control.hkeys(WRITE_FAILURES_KEY) and time.monotonic() < deadline:
            time.sleep(0.05)
        [reported] = [json.loads(v) for v in control.hvals(WRITE_FAILURES_KEY)]
    assert reported["shard"] == "s1"


def test_a_single_enqueue_its_shard_refuses_with_a_redis_error_is_503_naming_the_message_id(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    with cluster.shard("s0").primary.client() as conn:
        conn.set("rq:barrier", "not a counter")
    refused = http.post(f"/v1/numbers/{ON_S0}/messages", json={"id": "m-1", "body": "x"})
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["id"] == "m-1"
    assert refused.json()["error"]["code"] == "backend_unavailable"


def test_a_batch_over_the_message_limit_is_refused_whole_with_400_and_nothing_written(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_batch=3)
    messages = [{"number": ON_S0, "id": f"m{i}", "body": "x"} for i in range(4)]
    with httpx.Client(base_url=api.url, timeout=10) as http:
        response = http.post(BATCH, json={"messages": messages})
        assert_error(response, 400, "batch_too_large", "messages", "at most 3")
    assert shard_key_count(cluster) == 0


def test_a_batch_that_is_not_an_object_with_a_list_of_messages_is_refused_whole_with_400(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    for payload in ([{"number": ON_S0, "body": "x"}], {"messages": []}, {"messages": "x"}, {}):
        assert_error(http.post(BATCH, json=payload), 400, "invalid_request")
    assert shard_key_count(cluster) == 0


def test_a_batch_body_over_its_byte_limit_is_refused_whole_with_413(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_batch_body_bytes=1024)
    messages = [{"number": ON_S0, "id": f"m{i}", "body": "x" * 100} for i in range(10)]
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert_error(http.post(BATCH, json={"messages": messages}), 413, "body_too_large")
    assert shard_key_count(cluster) == 0


def test_a_message_body_over_the_per_message_limit_is_413_in_its_own_result(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_message_bytes=256)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        results = batch(
            http,
            {"number": ON_S0, "id": "big", "body": "x" * 300},
            {"number": ON_S0, "id": "small", "body": "x"},
        )
        assert [r["status"] for r in results] == [413, 201]
        assert results[0]["error"]["code"] == "message_too_large"
        assert "messages.0.body" in results[0]["error"]["message"]


def test_a_dequeue_fills_a_whole_batch_across_numbers_and_shards(http: httpx.Client) -> None:
    # Short codes (100/s, burst 100) on both shards: 60 due messages, asked for all at once.
    numbers = [str(20000 + i) for i in range(6)]
    messages = [{"number": n, "id": f"{n}-{i}", "body": "x"} for n in numbers for i in range(10)]
    results = batch(http, *messages)
    assert all(r["status"] == 201 for r in results)
    assert {r["shard"] for r in results} == {"s0", "s1"}
    leased = http.post("/v1/messages:dequeue", json={"max": 60, "lease_seconds": 30}).json()
    assert sorted(m["id"] for m in leased["messages"]) == sorted(m["id"] for m in messages)


def test_the_published_contract_declares_the_batch_limit(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_batch=250)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/messages:batch"]["post"]["requestBody"]["content"]
    schema = body["application/json"]["schema"]
    assert schema["properties"]["messages"]["maxItems"] == 250
    assert set(spec["paths"]["/v1/messages:batch"]["post"]["responses"]) >= {"200", "400", "413"}


def test_an_id_holding_a_batch_separator_is_422_in_its_own_result_and_the_others_are_queued(
    http: httpx.Client,
) -> None:
    results = batch(
        http,
        {"number": ON_S0, "id": "before", "body": "a"},
        {"number": ON_S0, "id": "tail\n", "body": "x"},
        {"number": ON_S0, "id": "a|b", "body": "x"},
        {"number": ON_S0, "id": "a b", "body": "x"},
        {"number": ON_S0, "id": "tab\t", "body": "x"},
        {"number": ON_S0, "id": "after", "body": "b"},
    )
    assert [r["status"] for r in results] == [201, 422, 422, 422, 422, 201]
    for result in results[1:5]:
        assert result["error"]["code"] == "invalid_id"
        assert f"field 'messages.{result['index']}.id'" in result["error"]["message"]
    leased = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30}).json()
    assert [m["id"] for m in leased["messages"]] == ["before"]  # one per number per interval
    assert depth(http, ON_S0) == 1


def test_a_single_enqueue_with_an_id_ending_in_a_newline_is_refused_naming_the_id(
    http: httpx.Client,
) -> None:
    response = http.post(f"/v1/numbers/{ON_S0}/messages", json={"id": "tail\n", "body": "x"})
    assert_error(response, 400, "invalid_id")
    assert "field 'id'" in response.json()["error"]["message"]
    assert depth(http, ON_S0) == 0


def test_metrics_count_each_message_of_a_batch_by_its_outcome(http: httpx.Client) -> None:
    batch(
        http,
        {"number": ON_S0, "id": "m-a", "body": "hello"},
        {"number": ON_S1, "id": "m-b", "body": "hello"},
        {"number": ON_S0, "id": "m-a", "body": "hello"},
        {"number": ON_S0, "id": "m-a", "body": "goodbye"},
        {"number": "not a number", "body": "x"},
    )
    samples = metric_samples(http.get("/metrics").text)
    assert samples[("ratequeue_enqueue_total", (("outcome", "acknowledged"),))] == 2
    assert samples[("ratequeue_enqueue_total", (("outcome", "duplicate"),))] == 1
    assert samples[("ratequeue_enqueue_total", (("outcome", "conflict"),))] == 1
    assert samples[("ratequeue_enqueue_total", (("outcome", "invalid"),))] == 1
    assert samples[("ratequeue_request_seconds_count", (("operation", "enqueue_batch"),))] == 1
