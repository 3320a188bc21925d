"""`common.direct_routes.DirectRoute`: an endpoint that reads its own request is called without
FastAPI's parameter solving, receiving what FastAPI would pass it, and any other endpoint keeps
FastAPI's handler. Apps built in-process and driven with Starlette's TestClient.

Not for: the queue API's answers (tests/test_http_api.py), or its speed (benchmarks/)."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from common.direct_routes import DirectRoute, direct_handler
from common.errors import InvalidRequest
from common.http_contract import install_error_handlers
from ratequeue.config import ServiceSettings
from ratequeue.service import create_app as create_queue_app

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


def test_the_published_openapi_is_the_same_as_fastapis() -> None:
    assert app_with(DirectRoute).openapi() == app_with(APIRoute).openapi()


def test_the_queue_apis_enqueue_routes_are_called_directly() -> None:
    app = create_queue_app(ServiceSettings(control_url="redis://127.0.0.1:1/0"))
    assert direct_handler(route(app, "/v1/numbers/{number}/messages")) is not None
    assert direct_handler(route(app, "/v1/messages:batch")) is not None
