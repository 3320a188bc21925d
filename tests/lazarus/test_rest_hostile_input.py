"""A controller node's REST against hostile and mistaken requests, over real HTTP with a real
redis-server control store: every one is a 4xx in the error envelope `{"error": {"code",
"message"}}` naming what was wrong, never a 5xx or a traceback, and never a long echo of what
was sent. The refused requests change nothing, so the tests share one node."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from detection.events import new_event
from tests.lazarus.served_node import post_unmatched_event, served_node

TOKEN = f"rest-token-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with served_node(tmp_path_factory.mktemp("rest"), TOKEN) as url,\
            httpx.Client(base_url=url, timeout=10) as session:  # fmt: skip
        yield session


def assert_refused(response: httpx.Response, status: int, code: str, *mentions: str) -> str:
    """A JSON error in the envelope, without a traceback; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] == code, error
    for mention in mentions:
        assert mention in error["message"], error["message"]
    assert "Traceback" not in response.text
    return error["message"]


def event_json(**changes: object) -> dict:
    event = new_event("HealthcheckDown", environment="dev", region="local", service="billing",
                      host="10.0.0.9", source="nagios").model_dump(mode="json")  # fmt: skip
    return {**event, **changes}


def test_a_non_ascii_authorization_header_gets_401_not_500(node: httpx.Client) -> None:
    response = node.post("/v1/events", json=event_json(),
                         headers={"Authorization": "Bearer tökén".encode("latin-1")})  # fmt: skip
    assert_refused(response, 401, "unauthorized")


def test_json_nested_thousands_deep_gets_400_not_500(node: httpx.Client) -> None:
    content = b'{"event": ' + b"[" * 5000 + b"]" * 5000 + b', "rule": "r"}'
    response = node.post("/v1/quorum/evaluate", content=content, headers=AUTH)
    assert_refused(response, 400, "invalid_request", "nested deeper than")


def test_an_integer_of_5000_digits_gets_400_not_500(node: httpx.Client) -> None:
    content = b'{"enabled": true, "reason": ' + b"7" * 5000 + b"}"
    response = node.post("/v1/killswitch", content=content, headers=AUTH)
    assert_refused(response, 400, "bad_json", "not valid JSON")


def test_an_event_id_of_5000_digits_gets_400_naming_the_id_and_what_was_expected(
    node: httpx.Client,
) -> None:
    content = b'{"id": ' + b"9" * 5000 + b', "type": "HealthcheckDown"}'
    response = node.post("/v1/events", content=content, headers=AUTH)
    message = assert_refused(response, 400, "bad_json", "field 'id'", "at most 4300 digits")
    assert "set_int_max_str_digits" not in message


def test_an_event_dated_in_the_year_9999_gets_422_naming_occurred_at(node: httpx.Client) -> None:
    event = event_json(occurred_at="9999-12-31T23:59:59-23:59")
    response = node.post("/v1/events", json=event, headers=AUTH)
    assert_refused(response, 422, "event_dated_ahead", "field 'occurred_at'", "at most 5 s ahead")
    assert node.get(f"/v1/events/{event['id']}").status_code == 404


def test_an_event_with_the_id_of_a_decided_one_gets_409_naming_the_id(node: httpx.Client) -> None:
    taken = post_unmatched_event(str(node.base_url), TOKEN)
    other = new_event("RedisMasterDown", environment="dev", region="local", service="ratequeue",
                      shard="s0", host="127.0.0.2:7001", source="sensor")  # fmt: skip
    response = node.post("/v1/events", json={**other.model_dump(mode="json"), "id": taken},
                         headers=AUTH)  # fmt: skip
    assert_refused(response, 409, "event_id_reused", f"event id '{taken}'")
    assert node.get(f"/v1/events/{taken}").json()["event"]["type"] == "HealthcheckDown"


@pytest.mark.parametrize("since", ["nan", "inf", "-Infinity"])
def test_a_since_that_is_not_a_finite_number_gets_400_naming_since(
    node: httpx.Client, since: str
) -> None:
    response = node.get("/v1/events", params={"since": since})
    assert_refused(response, 400, "invalid_request", "query 'since'")


def test_a_limit_that_is_not_a_number_gets_400_in_the_envelope_naming_limit(
    node: httpx.Client,
) -> None:
    assert_refused(node.get("/v1/events?limit=abc"), 400, "invalid_request", "query 'limit'")


def test_a_method_a_path_does_not_serve_gets_405_with_allow_naming_every_served_one(
    node: httpx.Client,
) -> None:
    response = node.put("/v1/killswitch", json={})
    assert_refused(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"


def test_an_unknown_path_gets_404_in_the_envelope(node: httpx.Client) -> None:
    assert_refused(node.get("/v2/nothing"), 404, "not_found", "/v2/nothing")


def test_a_long_value_is_not_echoed_back_whole(node: httpx.Client) -> None:
    rule = "r" * 100_000
    response = node.post("/v1/quorum/evaluate", json={"event": event_json(), "rule": rule},
                         headers=AUTH)  # fmt: skip
    assert len(assert_refused(response, 404, "unknown_rule", "rrrr")) < 200


def test_a_boolean_given_as_a_number_is_refused_naming_enabled(node: httpx.Client) -> None:
    response = node.post("/v1/killswitch", json={"enabled": 0}, headers=AUTH)
    assert_refused(response, 400, "invalid_request", "field 'enabled'")
    assert node.get("/v1/killswitch").json()["engaged"] == {}


@pytest.mark.parametrize("service", ["", "r" * 10_000, "ratequeue ", "\tratequeue"],
                         ids=["empty", "10000-chars", "trailing-space", "leading-tab"])  # fmt: skip
def test_shadowing_a_service_no_event_can_name_is_refused_naming_service(
    node: httpx.Client, service: str
) -> None:
    response = node.post("/v1/shadow", json={"enabled": True, "service": service}, headers=AUTH)
    message = assert_refused(response, 400, "invalid_request", "field 'service'")
    assert len(message) < 200
    assert node.get("/v1/shadow").json()["services"] == []


def test_an_event_whose_service_ends_with_a_space_is_refused_naming_service(
    node: httpx.Client,
) -> None:
    response = node.post("/v1/events", json=event_json(service="billing "), headers=AUTH)
    assert_refused(response, 400, "invalid_event", "field 'service'", "must not begin or end")


@pytest.mark.parametrize("occurred_at", [0, "0", "1700000000", "1700000000.5"],
                         ids=["number", "digit", "unix-time", "unix-time-fraction"])  # fmt: skip
def test_an_event_time_given_as_a_number_or_numeric_text_is_refused_naming_occurred_at(
    node: httpx.Client, occurred_at: object
) -> None:
    response = node.post("/v1/events", json=event_json(occurred_at=occurred_at), headers=AUTH)
    message = assert_refused(response, 400, "invalid_event", "field 'occurred_at'", "RFC 3339")
    assert "Value error" not in message
