"""The ratequeue HTTP API (DESIGN.md, "Ratequeue HTTP API") over real HTTP and real redis-server
shards: bad input, happy paths, a full queue, unreachable Redis, health, metrics, bad settings."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from common.http_contract import MAX_JSON_DEPTH
from common.redis_processes import RedisProcess
from ratequeue.config import ServiceSettings
from ratequeue.local_cluster import LocalCluster
from ratequeue.scripts import held_ids, state_key
from ratequeue.topology import EPOCH_TAKEN_AT_HEADER
from tests.conftest import ServedApi, shard_key_count
from tests.prometheus_samples import metric_samples

ON_S0 = "+14155550100"  # slot 2256: shard s0 of two
ON_S1 = "+14155550102"  # slot 10386: shard s1 of two
ON_S0_OTHER = "+14155550101"  # slot 6385: shard s0 of two
DEFAULT_BODY_LIMIT = 64 * 1024


def messages_url(number: str) -> str:
    return f"/v1/numbers/{number}/messages"


def assert_error(response: httpx.Response, status: int, code: str, *mentions: str) -> str:
    """The response is a JSON error `{"error": {"code", "message"}}`; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == code, error
    for mention in mentions:
        assert mention in error["message"], error["message"]
    return error["message"]


def enqueue(http: httpx.Client, number: str, body: object, message_id: str | None = None) -> dict:
    payload = {"body": body} if message_id is None else {"id": message_id, "body": body}
    response = http.post(messages_url(number), json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def lease_one(http: httpx.Client, number: str = ON_S0) -> dict:
    enqueue(http, number, "hello", "m-1")
    response = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30})
    [message] = response.json()["messages"]
    return message


def request_of(size: int) -> bytes:
    """An enqueue request of exactly `size` bytes."""
    envelope = b'{"id": "big", "body": ""}'
    return envelope.replace(b'""', b'"' + b"a" * (size - len(envelope)) + b'"')


def nested(levels: int) -> object:
    """A JSON value of lists nested `levels` deep."""
    value: object = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the refusal tests, which write nothing when they pass (each test checks
    that), so they need no fresh cluster each: that keeps this module quick."""
    cluster = LocalCluster.start(tmp_path_factory.mktemp("shared"), shards=2, replicas=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def refusing(shared_cluster: LocalCluster) -> Iterator[httpx.Client]:
    """An HTTP session with the API served over `shared_cluster`."""
    settings = ServiceSettings(control_url=shared_cluster.control.url, wait_timeout_ms=300,
                               retry_deadline=0.5, refresh_interval=0.5)  # fmt: skip
    with ServedApi(settings) as api, httpx.Client(base_url=api.url, timeout=10) as session:
        yield session


# -- bad input: a 4xx JSON error, and nothing written ---------------------------------------------
# These share one cluster (`refusing`, `shared_cluster`): each checks that it wrote nothing.

JSON = {"content-type": "application/json"}


def test_a_malformed_number_is_refused_with_400_and_nothing_written(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url("not-a-number"), json={"body": "hello"})
    assert_error(response, 400, "invalid_number", "number", "not-a-number")
    assert shard_key_count(shared_cluster) == before


def test_a_malformed_number_is_refused_by_number_info_and_by_set_rate(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    before = shard_key_count(shared_cluster)
    assert_error(refusing.get("/v1/numbers/12"), 400, "invalid_number", "number")
    response = refusing.put("/v1/numbers/12/rate", json={"per_second": 5})
    assert_error(response, 400, "invalid_number", "number")
    assert shard_key_count(shared_cluster) == before


def test_a_body_of_one_byte_over_64_kib_is_refused_with_413_and_nothing_written(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    before = shard_key_count(shared_cluster)
    over = refusing.post(messages_url(ON_S0), content=request_of(DEFAULT_BODY_LIMIT + 1),
                         headers=JSON)  # fmt: skip
    assert_error(over, 413, "body_too_large", str(DEFAULT_BODY_LIMIT))
    assert shard_key_count(shared_cluster) == before


def test_a_body_over_the_limit_with_an_honest_content_length_is_refused_with_413(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), json={"body": "a" * 100_000})
    assert int(response.request.headers["content-length"]) > DEFAULT_BODY_LIMIT
    assert_error(response, 413, "body_too_large", str(DEFAULT_BODY_LIMIT))
    assert shard_key_count(shared_cluster) == before


def test_a_body_over_the_limit_streamed_without_a_content_length_is_refused_with_413(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"body": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'

    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "body_too_large", str(DEFAULT_BODY_LIMIT))
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("content", [b'{"body": "unterminated', b"", b'{"body": "\xff\xfe"}'],
                         ids=["truncated", "empty", "not-utf8"])  # fmt: skip
def test_a_body_that_is_not_json_is_refused_with_400_and_nothing_written(
    refusing: httpx.Client, shared_cluster: LocalCluster, content: bytes
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), content=content, headers=JSON)
    assert_error(response, 400, "bad_json", "not valid JSON")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "1" * 5000])
def test_numbers_json_cannot_carry_are_refused_with_400_not_stored_or_500(
    refusing: httpx.Client, shared_cluster: LocalCluster, value: str
) -> None:
    # Python's parser takes NaN and Infinity, makes 1e400 infinite, and refuses integers of over
    # 4300 digits with a ValueError: none may be stored (it would come back altered or as a 500).
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), content=f'{{"body": {value}}}'.encode(),
                             headers=JSON)  # fmt: skip
    assert_error(response, 400, "bad_json")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 30_000])
def test_json_nested_deeper_than_the_limit_is_refused_with_400_not_500(
    refusing: httpx.Client, shared_cluster: LocalCluster, levels: int
) -> None:
    before = shard_key_count(shared_cluster)
    # Written out by hand: the test's own json.dumps could not nest 30 000 deep either.
    content = b'{"body": ' + b"[" * (levels - 1) + b"0" + b"]" * (levels - 1) + b"}"
    response = refusing.post(messages_url(ON_S0), content=content, headers=JSON)
    assert_error(response, 400, "invalid_request", f"deeper than {MAX_JSON_DEPTH} levels")
    assert shard_key_count(shared_cluster) == before


# As an escape, and as the raw bytes UTF-8 would give U+D800 (no valid UTF-8 holds them).
@pytest.mark.parametrize("surrogate", [b"\\ud800", b"\xed\xa0\x80"], ids=["escape", "raw"])
def test_a_lone_surrogate_in_a_json_string_is_refused_with_400_not_500(
    refusing: httpx.Client, shared_cluster: LocalCluster, surrogate: bytes
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), content=b'{"body": "half %s a pair"}' % surrogate,
                             headers=JSON)  # fmt: skip
    assert_error(response, 400, "bad_json", "surrogate")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("payload", [[{"body": "hello"}], "hello", 42, None])
def test_json_that_is_not_an_object_is_refused_with_400(
    refusing: httpx.Client, shared_cluster: LocalCluster, payload: object
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), content=json.dumps(payload), headers=JSON)
    assert_error(response, 400, "invalid_request", "JSON object")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", messages_url(ON_S0), {"body": "hello", "priority": 1}),
        ("POST", "/v1/messages:dequeue", {"max": 1, "lease_seconds": 30, "priority": 1}),
        ("POST", "/v1/messages:ack", {"receipts": [], "priority": 1}),
        ("PUT", f"/v1/numbers/{ON_S0}/rate", {"per_second": 5, "priority": 1}),
    ],
    ids=["enqueue", "dequeue", "ack", "rate"],
)
def test_an_unknown_field_is_refused_naming_the_field(
    refusing: httpx.Client, shared_cluster: LocalCluster, method: str, path: str, payload: dict
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.request(method, path, json=payload)
    assert_error(response, 400, "invalid_request", "'priority'")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("POST", messages_url(ON_S0), "body"),
        ("POST", "/v1/messages:dequeue", "lease_seconds"),
        ("POST", "/v1/messages:ack", "receipts"),
        ("PUT", f"/v1/numbers/{ON_S0}/rate", "per_second"),
    ],
    ids=["enqueue", "dequeue", "ack", "rate"],
)
def test_a_missing_required_field_is_refused_naming_the_field(
    refusing: httpx.Client, shared_cluster: LocalCluster, method: str, path: str, field: str
) -> None:
    before = shard_key_count(shared_cluster)
    payload = {"max": 1} if path.endswith("dequeue") else {}
    response = refusing.request(method, path, json=payload)
    assert_error(response, 400, "invalid_request", f"'{field}'")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("per_second", [0, -1, 100_001, "fast", 1e-15, 5e-324, 0.0009])
def test_a_rate_that_is_not_a_positive_number_in_range_is_refused_naming_per_second(
    refusing: httpx.Client, shared_cluster: LocalCluster, per_second: object
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.put(f"/v1/numbers/{ON_S0}/rate", json={"per_second": per_second})
    assert_error(response, 400, "invalid_request", "'per_second'")
    if isinstance(per_second, float) and per_second < 1:
        assert "0.001" in response.json()["error"]["message"]  # the allowed range is named
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("burst", [1.5, "2", True, 0, -3])
def test_a_burst_that_is_not_a_positive_integer_is_refused_naming_burst(
    refusing: httpx.Client, shared_cluster: LocalCluster, burst: object
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.put(f"/v1/numbers/{ON_S0}/rate", json={"per_second": 5, "burst": burst})
    assert_error(response, 400, "invalid_request", "'burst'")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize(("lease_seconds", "code"),
                         [(0, "invalid_request"), (-5, "invalid_request"),
                          (3600.5, "invalid_lease"), (1e300, "invalid_lease")])  # fmt: skip
def test_a_lease_out_of_range_is_refused_naming_lease_seconds(
    refusing: httpx.Client, shared_cluster: LocalCluster, lease_seconds: float, code: str
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post("/v1/messages:dequeue",
                             json={"max": 1, "lease_seconds": lease_seconds})  # fmt: skip
    assert_error(response, 400, code, "'lease_seconds'")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize("max_messages", [0, -1, 1001, 2.5, "3", True])
def test_a_dequeue_max_out_of_range_or_not_an_integer_is_refused_naming_max(
    refusing: httpx.Client, shared_cluster: LocalCluster, max_messages: object
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post("/v1/messages:dequeue",
                             json={"max": max_messages, "lease_seconds": 30})  # fmt: skip
    assert_error(response, 400, "invalid_request", "'max'")
    assert shard_key_count(shared_cluster) == before


def test_a_receipt_of_an_unknown_shard_is_refused_naming_receipts(
    refusing: httpx.Client,
) -> None:
    response = refusing.post("/v1/messages:ack", json={"receipts": ["s9:1:m-1"]})
    assert_error(response, 400, "invalid_receipt", "receipts", "s9")


@pytest.mark.parametrize("message_id", ["has space", "-leading-dash", "x" * 129, "ünïcode", ""])
def test_an_invalid_message_id_is_refused_naming_id_and_nothing_written(
    refusing: httpx.Client, shared_cluster: LocalCluster, message_id: str
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), json={"id": message_id, "body": "hello"})
    assert_error(response, 400, "invalid_id", "'id'")
    assert shard_key_count(shared_cluster) == before


def test_a_message_id_that_is_not_a_string_is_refused_naming_id(
    refusing: httpx.Client, shared_cluster: LocalCluster
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post(messages_url(ON_S0), json={"id": 42, "body": "hello"})
    assert_error(response, 400, "invalid_request", "'id'")
    assert shard_key_count(shared_cluster) == before


@pytest.mark.parametrize(("method", "path", "status", "code"),
                         [("GET", "/v2/nothing", 404, "not_found"),
                          ("GET", "/v1/messages:dequeue", 405, "method_not_allowed")])  # fmt: skip
def test_an_unknown_route_or_method_is_a_json_error(
    refusing: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    assert_error(refusing.request(method, path), status, code)


def test_a_method_a_path_does_not_serve_gets_405_with_allow_naming_the_served_ones(
    refusing: httpx.Client,
) -> None:
    response = refusing.delete(f"/v1/numbers/{ON_S0}/messages")
    assert_error(response, 405, "method_not_allowed", "DELETE")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(("field", "payload"),
                         [("lease_seconds", {"max": 1, "lease_seconds": "30"}),
                          ("lease_seconds", {"max": 1, "lease_seconds": True}),
                          ("max", {"max": "3", "lease_seconds": 30})])  # fmt: skip
def test_a_number_written_as_text_or_a_boolean_is_refused_naming_the_field(
    refusing: httpx.Client, shared_cluster: LocalCluster, field: str, payload: dict
) -> None:
    before = shard_key_count(shared_cluster)
    response = refusing.post("/v1/messages:dequeue", json=payload)
    assert_error(response, 400, "invalid_request", f"'{field}'")
    assert shard_key_count(shared_cluster) == before


def test_a_receipt_whose_sequence_is_not_ascii_digits_is_refused_naming_receipts(
    refusing: httpx.Client,
) -> None:
    response = refusing.post("/v1/messages:ack", json={"receipts": ["s0:\u00b2:m-1"]})
    assert_error(response, 400, "invalid_receipt", "receipts.0")


def test_a_long_malformed_receipt_is_not_echoed_back_whole(refusing: httpx.Client) -> None:
    response = refusing.post("/v1/messages:ack", json={"receipts": ["x" * 50_000]})
    assert len(assert_error(response, 400, "invalid_receipt", "xxxx", "receipts.0")) < 300


# -- bad input that needs a message of its own ---------------------------------------------------


def test_a_malformed_receipt_is_refused_naming_it_and_acknowledges_nothing_of_its_batch(
    http: httpx.Client,
) -> None:
    good = lease_one(http)["receipt"]
    for malformed in ["garbage", "s0:notanumber:m-1", "s0:1:", ""]:
        response = http.post("/v1/messages:ack", json={"receipts": [good, malformed]})
        assert_error(response, 400, "invalid_receipt", "'receipts.1'", repr(malformed))
    # The well-formed receipt of the refused batches was not acknowledged: it still holds a lease.
    assert http.post("/v1/messages:ack", json={"receipts": [good]}).json() == {"acked": 1}


def test_a_refused_dequeue_leases_nothing(http: httpx.Client) -> None:
    enqueue(http, ON_S0, "hello", "m-1")
    for payload in ({"max": 0, "lease_seconds": 30}, {"max": 1, "lease_seconds": 3601}):
        assert http.post("/v1/messages:dequeue", json=payload).status_code == 400
    leased = http.post("/v1/messages:dequeue", json={"max": 1, "lease_seconds": 30}).json()
    assert [(m["id"], m["attempt"]) for m in leased["messages"]] == [("m-1", 0)]


def test_a_body_of_exactly_64_kib_is_accepted(http: httpx.Client) -> None:
    response = http.post(messages_url(ON_S0), content=request_of(DEFAULT_BODY_LIMIT),
                         headers=JSON)  # fmt: skip
    assert response.status_code == 201, response.text


def test_a_body_nested_to_the_limit_is_accepted_and_delivered_intact(http: httpx.Client) -> None:
    body = nested(MAX_JSON_DEPTH - 1)  # under the request's top-level object
    enqueue(http, ON_S0, body, "deep")
    response = http.post("/v1/messages:dequeue", json={"max": 1, "lease_seconds": 30})
    assert response.status_code == 200, response.text
    assert response.json()["messages"][0]["body"] == body


# -- happy paths ----------------------------------------------------------------------------------


def test_an_enqueue_answers_201_with_the_id_the_canonical_number_and_the_shard(
    http: httpx.Client,
) -> None:
    response = http.post(messages_url("(415) 555-0100"), json={"id": "m-1", "body": "hello"})
    assert response.status_code == 201, response.text
    assert response.json() == {"id": "m-1", "number": ON_S0, "shard": "s0", "duplicate": False}
    assert enqueue(http, ON_S1, "hi")["shard"] == "s1"


def script_calls(node: RedisProcess) -> int:
    """How many EVALSHA the node has run (`INFO commandstats`)."""
    with node.client() as conn:
        return int(conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_concurrent_enqueues_sent_together_each_get_their_own_answer(
    cluster: LocalCluster, http: httpx.Client
) -> None:
    payloads = [{"id": f"m-{i}", "body": "hello"} for i in range(16)]
    payloads += [{"id": "same", "body": "retry"}] * 2 + [
        {"id": "clash", "body": "first"},
        {"id": "clash", "body": "second"},
    ]
    calls_before = script_calls(cluster.shard("s0").primary)
    with ThreadPoolExecutor(len(payloads)) as pool:
        answers = list(pool.map(lambda p: http.post(messages_url(ON_S0), json=p), payloads))
    # Sent together: fewer script calls than requests (each alone would be one call).
    assert script_calls(cluster.shard("s0").primary) - calls_before < len(payloads)
    statuses = [a.status_code for a in answers]
    assert statuses[:18] == [201] * 18
    assert sorted(statuses[18:]) == [201, 409]
    assert sorted(a.json()["duplicate"] for a in answers[16:18]) == [False, True]
    assert http.get(f"/v1/numbers/{ON_S0}").json()["depth"] == 18


def test_an_id_reused_for_another_body_answers_409_and_keeps_the_first(
    http: httpx.Client,
) -> None:
    enqueue(http, ON_S0, "hello", "m-1")
    response = http.post(messages_url(ON_S0), json={"id": "m-1", "body": "goodbye"})
    assert_error(response, 409, "id_conflict", "m-1")
    assert enqueue(http, ON_S0, "hello", "m-1")["duplicate"] is True
    dequeued = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30})
    assert [m["body"] for m in dequeued.json()["messages"]] == ["hello"]


def test_an_enqueue_without_an_id_is_given_one(http: httpx.Client) -> None:
    first, second = enqueue(http, ON_S0, "hello"), enqueue(http, ON_S0, "hello")
    assert first["id"] and second["id"] and first["id"] != second["id"]
    assert http.get(f"/v1/numbers/{ON_S0}").json()["depth"] == 2


def test_a_dequeue_returns_the_message_with_its_body_a_receipt_and_the_attempt(
    http: httpx.Client,
) -> None:
    body = {"text": "hello", "meta": [1, None, True]}
    enqueue(http, ON_S0, body, "m-1")
    response = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30})
    assert response.status_code == 200, response.text
    [message] = response.json()["messages"]
    assert set(message) == {"id", "number", "body", "receipt", "attempt", "leased_at"}
    assert (message["id"], message["number"], message["body"]) == ("m-1", ON_S0, body)
    leased_at = datetime.fromisoformat(message["leased_at"]).timestamp()
    assert abs(leased_at - time.time()) < 60  # the shard's clock, which is this host's
    assert message["attempt"] == 0 and message["receipt"].startswith("s0:")
    assert http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30}).json() == {
        "messages": []
    }


def test_a_whole_number_written_with_a_fraction_is_taken_as_an_integer(
    http: httpx.Client,
) -> None:
    enqueue(http, ON_S0, "hello", "m-1")
    response = http.post("/v1/messages:dequeue", json={"max": 2.0, "lease_seconds": 30})
    assert response.status_code == 200, response.text
    assert [m["id"] for m in response.json()["messages"]] == ["m-1"]


def test_an_ack_of_a_held_lease_answers_acked_1_and_the_message_is_gone(
    http: httpx.Client,
) -> None:
    receipt = lease_one(http)["receipt"]
    response = http.post("/v1/messages:ack", json={"receipts": [receipt]})
    assert response.status_code == 200, response.text
    assert response.json() == {"acked": 1}
    assert http.post("/v1/messages:ack", json={"receipts": [receipt]}).json() == {"acked": 0}
    info = http.get(f"/v1/numbers/{ON_S0}").json()
    assert (info["depth"], info["held_segments"]) == (0, 0)


def test_one_ack_carries_every_receipt_of_a_full_dequeue_with_the_longest_ids(
    http: httpx.Client,
) -> None:
    # 1,000 receipts naming 128-character ids are about 150 KB: past the single-message limit.
    assert http.put(f"/v1/numbers/{ON_S0}/rate",
                    json={"per_second": 100_000, "burst": 1000}).status_code == 200  # fmt: skip
    batch = [{"number": ON_S0, "id": f"{i:0128d}", "body": "x"} for i in range(1000)]
    queued = http.post("/v1/messages:batch", json={"messages": batch})
    assert [r["status"] for r in queued.json()["results"]] == [201] * 1000, queued.text
    leased = http.post("/v1/messages:dequeue", json={"max": 1000, "lease_seconds": 60}).json()
    receipts = [message["receipt"] for message in leased["messages"]]
    assert len(receipts) == 1000 and len(json.dumps({"receipts": receipts})) > DEFAULT_BODY_LIMIT

    response = http.post("/v1/messages:ack", json={"receipts": receipts})

    assert response.status_code == 200, response.text
    assert response.json() == {"acked": 1000}
    assert http.get(f"/v1/numbers/{ON_S0}").json()["depth"] == 0


def test_number_info_gives_depth_rate_and_next_eligible_time(http: httpx.Client) -> None:
    for i in range(3):
        enqueue(http, ON_S0, f"m{i}", f"m-{i}")
    sent_after = time.time()
    http.post("/v1/messages:dequeue", json={"max": 1, "lease_seconds": 30})  # spends 1 s of rate
    sent_before = time.time()
    response = http.get(f"/v1/numbers/{ON_S0}")
    assert response.status_code == 200, response.text
    info = response.json()
    assert (info["number"], info["type"], info["shard"]) == (ON_S0, "long_code", "s0")
    assert (info["depth"], info["held_segments"]) == (2, 3)
    assert info["rate"] == {"per_second": 1.0, "burst": 1, "source": "default"}
    # One segment at 1/s: eligible again 1 s after the send (to the millisecond of the shard).
    eligible_at = datetime.fromisoformat(info["next_eligible_at"]).timestamp()
    assert sent_after + 1 - 0.05 <= eligible_at <= sent_before + 1 + 0.05


def test_a_rate_set_by_put_is_shown_by_get(http: httpx.Client) -> None:
    response = http.put(f"/v1/numbers/{ON_S0}/rate", json={"per_second": 7.5, "burst": 2})
    assert response.status_code == 200, response.text
    assert response.json() == {"number": ON_S0, "shard": "s0", "per_second": 7.5, "burst": 2}
    info = http.get(f"/v1/numbers/{ON_S0}").json()
    assert info["rate"] == {"per_second": 7.5, "burst": 2, "source": "override"}
    assert info["capacity_segments"] == int(7.5 * 36_000)
    other = http.get(f"/v1/numbers/{ON_S1}").json()
    assert other["rate"]["source"] == "default"


def test_a_rate_set_for_a_number_written_with_separators_answers_its_canonical_form(
    http: httpx.Client,
) -> None:
    response = http.put("/v1/numbers/(415)555-0100/rate", json={"per_second": 2})
    assert response.status_code == 200, response.text
    assert response.json()["number"] == ON_S0
    assert http.get(f"/v1/numbers/{ON_S0}").json()["rate"]["per_second"] == 2


def test_a_rate_stored_out_of_range_poisons_no_queue_and_loses_no_message(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    # As a rate written before the API checked the range, or by hand, would be stored.
    for number, message_id in ((ON_S0, "tiny-rate"), (ON_S0_OTHER, "neighbour")):
        assert enqueue(http, number, "hi", message_id)["id"] == message_id
    with cluster.shard("s0").primary.client() as conn:
        for number, rate in ((ON_S0, "1e-15:1"), (ON_S0_OTHER, "5e-324:1")):
            conn.hset("rq:rates", number, rate)
            conn.hset(state_key(number), "r", rate)  # the rate in force for its queued messages
    for _ in range(3):
        answer = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30})
        assert answer.status_code == 200, answer.text
    leased = {m["id"] for m in answer.json()["messages"]}
    with cluster.shard("s0").primary.client() as conn:
        held = held_ids(conn, ON_S0) | held_ids(conn, ON_S0_OTHER)
    assert {"tiny-rate", "neighbour"} <= held | leased
    for number in (ON_S0, ON_S0_OTHER):
        info = http.get(f"/v1/numbers/{number}")
        assert info.status_code == 200, info.text
        assert info.json()["rate"]["per_second"] == 0.001  # the floor in force


def test_the_topology_has_an_epoch_and_shards_with_id_primary_and_replicas(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    response = http.get("/v1/topology")
    assert response.status_code == 200, response.text
    topology = response.json()
    assert topology["epoch"] == 1
    assert [s["id"] for s in topology["shards"]] == ["s0", "s1"]
    for shard, nodes in zip(topology["shards"], cluster.shards, strict=True):
        assert (shard["primary"]["host"], shard["primary"]["port"]) == (
            nodes.primary.host,
            nodes.primary.port,
        )
        assert [r["port"] for r in shard["replicas"]] == [r.port for r in nodes.replicas]


def test_the_topology_answer_says_when_the_api_began_routing_by_its_epoch(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    before = time.time()
    api = serve_api(cluster)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        first = http.get("/v1/topology")
        wait_for_a_reread(http)
        again = http.get("/v1/topology")
    taken = float(first.headers[EPOCH_TAKEN_AT_HEADER])
    assert before <= taken <= time.time()
    assert again.headers[EPOCH_TAKEN_AT_HEADER] == first.headers[EPOCH_TAKEN_AT_HEADER]


def wait_for_a_reread(http: httpx.Client, timeout: float = 10) -> None:
    """Until the API reread its topology (its periodic refresh): /healthz gives the topology's
    age, which only a reread makes smaller."""
    ages: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checks = http.get("/healthz").json()["checks"]
        detail = next(c["detail"] for c in checks if c["name"] == "topology")
        age = re.fullmatch(r"epoch \d+, ([0-9.]+) s old", detail)
        assert age is not None, detail
        ages.append(float(age.group(1)))
        if len(ages) > 1 and ages[-1] < ages[-2]:
            return
        time.sleep(0.05)
    raise AssertionError(f"no reread of the topology within {timeout} s (ages seen: {ages})")


# -- a full queue ---------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_the_reason_and_writes_nothing(
    cluster: LocalCluster, serve_api: Callable
) -> None:
    api = serve_api(cluster, max_queue_seconds=3)  # 3 s of a 1/s long code: 3 segments
    with httpx.Client(base_url=api.url, timeout=10) as http:
        enqueue(http, ON_S0, "a" * 300, "two-segments")
        before = shard_key_count(cluster)
        response = http.post(messages_url(ON_S0), json={"id": "two-more", "body": "a" * 300})
        assert_error(response, 429, "queue_full", ON_S0, "limit of 3")
        assert shard_key_count(cluster) == before
        assert http.get(f"/v1/numbers/{ON_S0}").json()["depth"] == 1
        assert enqueue(http, ON_S0, "one", "one-more")["duplicate"] is False


# -- Redis unreachable ----------------------------------------------------------------------------


def test_a_shard_whose_primary_is_down_answers_503_with_retry_after_never_500(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    cluster.shards[0].primary.stop()
    response = http.post(messages_url(ON_S0), json={"id": "m-1", "body": "hello"})
    assert_error(response, 503, "shard_unavailable", "s0")
    assert int(response.headers["retry-after"]) >= 1
    info = http.get(f"/v1/numbers/{ON_S0}")
    assert_error(info, 503, "shard_unavailable")
    assert "retry-after" in info.headers


def test_a_shard_script_failing_on_unexpected_data_answers_503_never_500(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    with cluster.shards[0].primary.client() as conn:
        conn.set(state_key(ON_S0), "not a hash")  # the number's state of the wrong type
    response = http.post(messages_url(ON_S0), json={"id": "m-1", "body": "hello"})
    assert_error(response, 503, "shard_script_failed", "s0")


def test_numbers_on_other_shards_are_served_while_one_shard_is_down(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    cluster.shards[0].primary.stop()
    assert enqueue(http, ON_S1, "hello", "m-1")["shard"] == "s1"
    leased = http.post("/v1/messages:dequeue", json={"max": 10, "lease_seconds": 30})
    assert leased.status_code == 200, leased.text
    [message] = leased.json()["messages"]
    assert message["id"] == "m-1"
    acked = http.post("/v1/messages:ack", json={"receipts": [message["receipt"]]})
    assert acked.json() == {"acked": 1}


@pytest.mark.redis_control_store(
    "the control Redis stopped under the API; on etcd its store is etcd, and "
    "tests/test_api_without_its_store.py takes quorum away on both backends"
)
def test_with_the_control_store_down_the_api_serves_from_its_cached_topology(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    cluster.control.stop()
    assert enqueue(http, ON_S0, "hello", "m-1")["shard"] == "s0"
    assert enqueue(http, ON_S1, "hello", "m-2")["shard"] == "s1"
    assert http.get("/v1/topology").json()["epoch"] == 1
    health = http.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["in_load_balancer"] is True
    checks = {c["name"]: c for c in health.json()["checks"]}
    assert checks["control_store"]["ok"] is False
    assert "cached" in checks["control_store"]["detail"]
    assert checks["topology"]["ok"] is True


# -- health ---------------------------------------------------------------------------------------


def test_healthz_is_200_in_the_load_balancer_with_named_checks_when_all_is_well(
    http: httpx.Client,
) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["in_load_balancer"] is True
    checks = {c["name"]: c for c in health["checks"]}
    assert set(checks) == {"control_store", "topology", "shard:s0", "shard:s1"}
    assert all(c["ok"] is True and c["detail"] for c in checks.values())


def test_healthz_is_503_out_of_the_load_balancer_when_no_shard_can_be_served(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    for shard in cluster.shards:
        shard.primary.stop()
    response = http.get("/healthz")
    assert response.status_code == 503, response.text
    health = response.json()
    assert health["in_load_balancer"] is False
    checks = {c["name"]: c["ok"] for c in health["checks"]}
    assert checks == {"control_store": True, "topology": True, "shard:s0": False,
                      "shard:s1": False}  # fmt: skip


def test_healthz_stays_200_while_at_least_one_shard_can_be_served(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    cluster.shards[0].primary.stop()
    response = http.get("/healthz")
    assert response.status_code == 200, response.text
    checks = {c["name"]: c["ok"] for c in response.json()["checks"]}
    assert (checks["shard:s0"], checks["shard:s1"]) == (False, True)


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_count_requests_by_outcome_and_report_messages_per_shard(
    http: httpx.Client,
) -> None:
    enqueue(http, ON_S0, "a", "m-1")
    enqueue(http, ON_S0, "b", "m-2")
    enqueue(http, ON_S0, "a", "m-1")  # a duplicate
    enqueue(http, ON_S1, "c", "m-3")
    http.post(messages_url("nope"), json={"body": "x"})
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    assert samples[("ratequeue_enqueue_total", (("outcome", "acknowledged"),))] == 3
    assert samples[("ratequeue_enqueue_total", (("outcome", "duplicate"),))] == 1
    assert samples[("ratequeue_enqueue_total", (("outcome", "invalid"),))] == 1
    assert samples[("ratequeue_request_seconds_count", (("operation", "enqueue"),))] == 4
    assert samples[("ratequeue_wait_failures_total", ())] == 0
    assert samples[("ratequeue_shard_messages", (("shard", "s0"),))] == 2
    assert samples[("ratequeue_shard_messages", (("shard", "s1"),))] == 1


def test_metrics_report_the_layout_1_records_the_upgrade_quarantined_per_shard(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    with cluster.shards[0].primary.client() as conn:  # a layout-1 record that does not parse
        conn.hset("rq:msg", f"{ON_S0}/bad", "not a record")
        conn.rpush(f"rq:q:{ON_S0}", "bad")
        conn.hset("rq:seg", ON_S0, 1)
    enqueue(http, ON_S0, "a", "m-1")  # converts ON_S0 first: the record goes to quarantine
    samples = metric_samples(http.get("/metrics").text)
    assert samples[("ratequeue_shard_quarantined", (("shard", "s0"),))] == 1
    assert samples[("ratequeue_shard_quarantined", (("shard", "s1"),))] == 0


def test_metrics_count_a_write_that_wait_did_not_confirm_as_a_wait_failure(
    http: httpx.Client, cluster: LocalCluster
) -> None:
    replica = cluster.shards[0].replicas[0]
    # Paused, the replica is still counted by the primary for a second or more, so the write is
    # made and WAIT is what falls short (a replica gone is refused before writing: NOREPLICAS).
    replica.signal(signal.SIGSTOP)
    try:
        response = http.post(messages_url(ON_S0), json={"id": "m-1", "body": "hello"})
    finally:
        replica.signal(signal.SIGCONT)
    assert_error(response, 503, "durability_not_met")
    samples = metric_samples(http.get("/metrics").text)
    assert samples[("ratequeue_wait_failures_total", ())] == 1
    assert samples[("ratequeue_enqueue_total", (("outcome", "unavailable"),))] == 1


# -- bad configuration ----------------------------------------------------------------------------


def serve_command(*options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
    return subprocess.run([sys.executable, "-m", "ratequeue", "serve", *options],
                          capture_output=True, text=True, timeout=30, env=env)  # fmt: skip


def test_a_control_url_that_is_not_a_redis_url_stops_serve_with_exit_2_naming_control_url() -> None:
    result = serve_command("--control", "notaurl", "--port", "1")
    assert result.returncode == 2, result.stderr
    assert "'control_url'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_negative_min_replicas_stops_serve_with_exit_2_naming_min_replicas() -> None:
    result = serve_command("--control", "redis://127.0.0.1:1/0", "--min-replicas", "-1",
                           "--port", "1")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "'min_replicas'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_from_the_environment_is_refused_the_same_way() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
    env |= {"RATEQUEUE_CONTROL_URL": "redis://127.0.0.1:1/0", "RATEQUEUE_MAX_BODY_BYTES": "10"}
    result = subprocess.run([sys.executable, "-m", "ratequeue", "serve", "--port", "1"],
                            capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "'max_body_bytes'" in result.stderr


def test_every_bad_setting_is_named_at_once() -> None:
    result = serve_command("--control", "notaurl", "--min-replicas", "99", "--port", "1")
    assert result.returncode == 2, result.stderr
    assert "'control_url'" in result.stderr and "'min_replicas'" in result.stderr


@pytest.mark.parametrize(
    ("setting", "bad"),
    [
        ("dedup_window_seconds", "0"),
        ("max_dequeue", "0"),
        ("max_lease_seconds", "0"),
        ("max_number_segments", "0"),
        ("max_message_bytes", "0"),
        ("workers", "0"),
    ],
)
@pytest.mark.parametrize("source", ["cli", "environment"])
def test_the_queue_limits_are_settings_refused_by_name_from_either_source(
    setting: str, bad: str, source: str
) -> None:
    if source == "cli":
        result = serve_command("--control", "redis://127.0.0.1:1/0", "--port", "1",
                               f"--{setting.replace('_', '-')}", bad)  # fmt: skip
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
        env |= {"RATEQUEUE_CONTROL_URL": "redis://127.0.0.1:1/0",
                f"RATEQUEUE_{setting.upper()}": bad}  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "ratequeue", "serve", "--port", "1"],
                                capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"'{setting}'" in result.stderr and "Traceback" not in result.stderr
