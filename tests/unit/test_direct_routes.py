"""`common.direct_routes.DirectRoute`: an endpoint that reads its own request is called without
FastAPI's parameter solving, receiving what FastAPI would pass it, and any other endpoint keeps
FastAPI's handler. Apps built in-process and driven with Starlette's TestClient.

Not for: the queue API's answers (tests/test_http_api.py), or its speed (benchmarks/)."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import pytest
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.responses import Response

from common.direct_routes import DirectRoute, Handler, direct_handler
from common.errors import InvalidRequest
from common.http_contract import install_error_handlers
from ratequeue.config import ServiceSettings
from ratequeue.service import create_app as create_queue_app
from ratequeue.topology import EPOCH_TAKEN_AT_HEADER, NodeRef, Shard, Topology, topology_json

Described = Annotated[str, Path(description="any text", json_schema_extra={"pattern": "^a"})]


def app_with(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    app.router.route_class = route_class
    install_error_handlers(app)

    @app.post("/echo/{name}/of/{other}", status_code=201)
    async def echo(name: Described, other: str, request: Request) -> JSONResponse:
        body = (await request.body()).decode()
        return JSONResponse({"name": name, "other": other, "body": body}, status_code=201)

    @app.post("/refuse/{name}")
    async def refuse(name: str) -> JSONResponse:
        raise InvalidRequest(f"field 'name': {name} refused")

    @app.get("/counted/{count}")
    async def counted(count: int) -> JSONResponse:
        return JSONResponse({"count": count})

    @app.get("/short/{name}")
    async def short(name: Annotated[str, Path(max_length=3)]) -> JSONResponse:
        return JSONResponse({"name": name})

    @app.get("/query")
    async def query(limit: int = 5) -> JSONResponse:
        return JSONResponse({"limit": limit})

    @app.get("/data/{name}")
    async def data(name: str) -> dict:
        return {"name": name}

    return app


def route(app: FastAPI, path: str) -> APIRoute:
    return next(r for r in app.routes if isinstance(r, APIRoute) and r.path == path)


@pytest.fixture(params=[APIRoute, DirectRoute], ids=["fastapi", "direct"])
def client(request: pytest.FixtureRequest) -> TestClient:
    return TestClient(app_with(request.param))


def test_an_endpoint_reading_its_own_request_is_called_directly() -> None:
    app = app_with(DirectRoute)
    assert direct_handler(route(app, "/echo/{name}/of/{other}")) is not None
    assert direct_handler(route(app, "/refuse/{name}")) is not None


@pytest.mark.parametrize(
    "path", ["/counted/{count}", "/short/{name}", "/query", "/data/{name}"],
    ids=["int-path", "constrained-path", "query-parameter", "returns-data"],
)  # fmt: skip
def test_an_endpoint_needing_fastapi_keeps_its_handler(path: str) -> None:
    assert direct_handler(route(app_with(DirectRoute), path)) is None


@pytest.mark.parametrize(
    ("url", "name", "other"),
    [("/echo/abc/of/x", "abc", "x"), ("/echo/%2B1%20415/of/%C3%A9", "+1 415", "é")],
)
def test_path_parameters_arrive_decoded_as_fastapi_passes_them(
    client: TestClient, url: str, name: str, other: str
) -> None:
    answer = client.post(url, content=b'{"k": 1}')
    assert answer.status_code == 201
    assert answer.json() == {"name": name, "other": other, "body": '{"k": 1}'}


def test_an_error_raised_by_a_direct_endpoint_reaches_the_apps_handlers(
    client: TestClient,
) -> None:
    answer = client.post("/refuse/x")
    assert answer.status_code == 400
    assert answer.json() == {"error": {"code": "invalid_request",
                                       "message": "field 'name': x refused"}}  # fmt: skip


@pytest.mark.parametrize(
    ("url", "status"), [("/counted/seven", 400), ("/short/abcd", 400), ("/query?limit=x", 400),
                        ("/counted/7", 200), ("/data/z", 200)],
)  # fmt: skip
def test_the_endpoints_left_to_fastapi_still_validate_and_serialize(
    client: TestClient, url: str, status: int
) -> None:
    assert client.get(url).status_code == status


# -- the queue API, built with each route class ---------------------------------------------
# No server behind it (nothing listens on port 1): a request that gets past the checks is a 503,
# the same from both apps; they answer from the same code unless the route class differs.
SETTINGS = ServiceSettings(control_url="redis://127.0.0.1:1/0")
ENQUEUE, BATCH = "/v1/numbers/%2B14155550100/messages", "/v1/messages:batch"
JSON = {"content-type": "application/json"}
TOO_BIG = b'{"body": "' + b"x" * (SETTINGS.max_body_bytes + 1) + b'"}'
BRACKETED = '{"body": "' + "[{" * 100 + '", "id": "a"}'

HOSTILE = {
    "malformed-json": ("POST", ENQUEUE, b'{"body": ', JSON),
    "empty-body": ("POST", ENQUEUE, b"", JSON),
    "null": ("POST", ENQUEUE, b"null", JSON),
    "wrong-content-type": ("POST", ENQUEUE, b'{"body": 1}', {"content-type": "text/plain"}),
    "oversize-body": ("POST", ENQUEUE, TOO_BIG, JSON),
    "deep-nesting": ("POST", ENQUEUE, b"[" * 5000, JSON),
    "brackets-in-strings-bad-number": (
        "POST", "/v1/numbers/not-a-number/messages", BRACKETED.encode(), JSON),
    "nan": ("POST", ENQUEUE, b'{"body": NaN}', JSON),
    "batch-malformed": ("POST", BATCH, b'{"messages": [', JSON),
    "batch-null": ("POST", BATCH, b"null", JSON),
    "batch-deep-nesting": ("POST", BATCH, b'{"messages": ' + b"[" * 5000, JSON),
    "batch-only-refusals": (
        "POST", BATCH,
        ('{"messages": [{"number": "x", "body": "' + "]" * 80 + '"}, 7, null]}').encode(), JSON),
    "wrong-method": ("GET", ENQUEUE, b"", {}),
    "health-without-shards": ("GET", "/healthz", b"", {}),
    "topology-not-loaded": ("GET", "/v1/topology", b"", {}),
}  # fmt: skip


def queue_client(route_class: type[APIRoute], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("ratequeue.service.DirectRoute", route_class)
    return TestClient(create_queue_app(SETTINGS), raise_server_exceptions=False)


ROUTED = Topology(epoch=4, shards=[
    Shard(id="s0", slots=(0, 16383), epoch=4, primary=NodeRef(name="n1", host="127.0.0.1", port=1)),
])  # fmt: skip
TAKEN_AT = 1_764_000_000.25


def routing_by_a_map(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The app's client holding ROUTED since TAKEN_AT, as if it had loaded it (no control store
    answers here to load it from, and the same moment makes two apps' answers comparable)."""
    queue = client.app.state.client  # type: ignore[attr-defined]
    monkeypatch.setattr(queue, "_topology", ROUTED)
    monkeypatch.setattr(queue, "_epoch_taken_at", TAKEN_AT)
    return client


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_queue_api_answers_hostile_requests_as_fastapis_own_routes_do(
    case: tuple[str, str, bytes, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    method, url, body, headers = case
    answers = []
    for route_class in (APIRoute, DirectRoute):
        answer = queue_client(route_class, monkeypatch).request(
            method, url, content=body, headers=headers
        )
        answers.append((answer.status_code, answer.headers.get("content-type"),
                        without_a_made_up_id(answer.text)))  # fmt: skip
    assert answers[0][0] != 500  # a refusal or a 503, never a traceback
    assert answers[1] == answers[0]


def without_a_made_up_id(text: str) -> str:
    """An enqueue's 503 names the id made up for the message: another each time."""
    with contextlib.suppress(ValueError):
        answer = json.loads(text)
        if isinstance(answer, dict) and "error" in answer and "id" in answer:
            return json.dumps({**answer, "id": "<made up>"})
    return text


def test_the_queue_apis_published_openapi_is_the_same_as_fastapis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published = [queue_client(route_class, monkeypatch).app.openapi()  # type: ignore[attr-defined]
                 for route_class in (APIRoute, DirectRoute)]  # fmt: skip
    assert published[1] == published[0]


def test_the_topology_answers_from_a_direct_route_as_from_fastapis_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = []
    for route_class in (APIRoute, DirectRoute):
        client = routing_by_a_map(queue_client(route_class, monkeypatch), monkeypatch)
        answer = client.get("/v1/topology")
        answers.append((answer.status_code, dict(answer.headers), answer.json()))
    assert answers[1] == answers[0]
    status, headers, body = answers[0]
    assert (status, headers["content-type"], body) == (200, "application/json",
                                                       topology_json(ROUTED))  # fmt: skip
    assert headers[EPOCH_TAKEN_AT_HEADER.lower()] == "1764000000.250000"


def test_every_direct_endpoint_of_the_queue_api_returns_a_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DirectRoute trusts the return annotation; a direct endpoint returning data would reach
    # Starlette unserialized. Each direct handler's result is checked as it is returned.
    returned: dict[str, list[object]] = {}

    def recording(route: APIRoute) -> Handler | None:
        handler = direct_handler(route)
        if handler is None:
            return None

        async def recorded(request: Request) -> Response:
            result = await handler(request)
            returned.setdefault(route.path, []).append(result)
            return result

        return recorded

    monkeypatch.setattr("common.direct_routes.direct_handler", recording)
    client = TestClient(create_queue_app(SETTINGS), raise_server_exceptions=False)
    direct = {r.path for r in client.app.routes  # type: ignore[attr-defined]
              if isinstance(r, APIRoute) and direct_handler(r) is not None}  # fmt: skip
    assert direct == {"/v1/numbers/{number}/messages", BATCH, "/healthz", "/metrics",
                      "/v1/topology"}  # fmt: skip
    for method, url, body, headers in HOSTILE.values():
        client.request(method, url, content=body, headers=headers)
    client.get("/metrics")
    routing_by_a_map(client, monkeypatch).get("/v1/topology")
    assert returned.keys() == direct
    assert all(isinstance(result, Response) for results in returned.values() for result in results)
