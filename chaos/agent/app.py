"""The agent's HTTP API: a thin layer over an `Agent` (`app.state.agent`) that reads the key,
the team and the body, calls the agent and answers in Gremlin's shapes, with every status each
operation answers published in its OpenAPI. The app halts every active attack when it shuts
down.

Not for: any decision about an attack (the `Agent` makes them all, refusing with AgentError,
which the shared error handlers answer as `AGENT_ERRORS`).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from chaos.agent.attacks import AttackView, Execution
from chaos.agent.commands import ATTACK_REQUEST
from chaos.agent.error_body import AGENT_ERRORS
from chaos.agent.state import Agent
from chaos.errors import AgentError
from common.errors import InvalidRequest
from common.http_contract import (
    credential,
    error_responses,
    install_error_handlers,
    json_request_body,
    publish_contract,
    read_json_body,
)

MAX_BODY_BYTES = 64 * 1024
KEY_HEADER = APIKeyHeader(name="Authorization", scheme_name="apiKey", auto_error=False,
                          description="`Key <API key>`")  # fmt: skip
TEAM = Query(None, description="the team of a team-scoped key (403 if it is not the agent's)")
HALTING = {202: {"description": "halting: rolled back, or rolling back"}}
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
GUID_TEXT = {"text/plain": {"schema": {"type": "string"}}}


class Health(BaseModel):
    ok: bool
    active: int


def agent_of(request: Request) -> Agent:
    """The agent this app serves."""
    agent: Agent = request.app.state.agent
    return agent


def authorized(request: Request, _: str | None = Security(KEY_HEADER)) -> None:
    """The key comes first (a route dependency runs before the parameters are checked): a
    request without it learns nothing, not even what else is wrong with it."""
    agent_of(request).authorize(credential(request, "Key"), request.query_params.get("teamId"))


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The refusals a `/v1` route answers: the key's and the team's, and `statuses`."""
    return error_responses(AGENT_ERRORS, (401, 403, *statuses))


@dataclass(frozen=True)
class V1Route:
    """A `/v1` operation as `create_app` registers it, behind the key."""

    method: str
    path: str
    endpoint: Callable[..., Any]
    options: dict[str, Any]


V1_ROUTES: list[V1Route] = []


def v1(method: str, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Declare `/v1{path}` (registered by `create_app` in declaration order, which is the
    OpenAPI's order and the order routes match in)."""

    def declare(endpoint: Endpoint) -> Endpoint:
        V1_ROUTES.append(V1Route(method, path, endpoint, options))
        return endpoint

    return declare


def healthz(agent: Agent = Depends(agent_of)) -> Health:
    return Health(ok=True, active=len(agent.listing("active")))


CREATE_OPTIONS: dict[str, Any] = {
    "status_code": 201,
    "response_class": PlainTextResponse,
    "openapi_extra": json_request_body(ATTACK_REQUEST),
    "responses": {201: {"description": "the new attack's guid", "content": GUID_TEXT},
                  **errors(400, 413)},
}  # fmt: skip


# Gremlin's create endpoint; `/attacks/new` is its deprecated name (gremlin-python still posts
# there), so both are served and the old one is published as deprecated.
@v1("POST", "/attacks/new", deprecated=True, **CREATE_OPTIONS)
@v1("POST", "/attacks", **CREATE_OPTIONS)
async def new_attack(
    request: Request, teamId: str | None = TEAM, agent: Agent = Depends(agent_of)
) -> Response:
    try:
        body = await read_json_body(request, MAX_BODY_BYTES)
    except InvalidRequest as error:
        raise AgentError(error.http_status, error.message, "body") from None
    attack = await anyio.to_thread.run_sync(agent.create, body)
    return PlainTextResponse(attack.guid, status_code=201)


@v1("GET", "/attacks/active", response_model=list[AttackView], responses=errors())
def active(teamId: str | None = TEAM, agent: Agent = Depends(agent_of)) -> list[AttackView]:
    return [a.view() for a in agent.listing("active")]


@v1("GET", "/attacks/completed", response_model=list[AttackView], responses=errors())
def completed(teamId: str | None = TEAM, agent: Agent = Depends(agent_of)) -> list[AttackView]:
    return [a.view() for a in agent.listing("completed")]


@v1("GET", "/attacks", response_model=list[AttackView], responses=errors())
def all_attacks(teamId: str | None = TEAM, agent: Agent = Depends(agent_of)) -> list[AttackView]:
    return [a.view() for a in agent.listing()]


@v1("DELETE", "/attacks", status_code=202, response_class=Response,
           responses={**HALTING, **errors()})  # fmt: skip
def halt_all(teamId: str | None = TEAM, agent: Agent = Depends(agent_of)) -> Response:
    agent.halt_all()
    return Response(status_code=202)


@v1("GET", "/attacks/{guid}", response_model=AttackView, responses=errors(404))
def get_attack(
    guid: str, teamId: str | None = TEAM, agent: Agent = Depends(agent_of)
) -> AttackView:
    return agent.get(guid).view()


@v1("DELETE", "/attacks/{guid}", status_code=202, response_class=Response,
           responses={**HALTING, **errors(404)})  # fmt: skip
def halt_attack(guid: str, teamId: str | None = TEAM, agent: Agent = Depends(agent_of)) -> Response:
    agent.halt(guid)
    return Response(status_code=202)


@v1("GET", "/executions", response_model=list[Execution], responses=errors(400, 404))
def executions(
    taskId: str = Query(..., min_length=1, description="the attack's guid"),
    teamId: str | None = TEAM,
    agent: Agent = Depends(agent_of),
) -> list[Execution]:
    return agent.get(taskId).executions()


@contextlib.asynccontextmanager
async def _halt_on_shutdown(app: FastAPI) -> AsyncIterator[None]:
    yield
    await anyio.to_thread.run_sync(app.state.agent.halt_all)


def create_app(agent: Agent) -> FastAPI:
    """The HTTP API around `agent`; halts every active attack when the app shuts down."""
    app = FastAPI(
        title="ratequeue-chaos agent (Gremlin-compatible attacks API)",
        lifespan=_halt_on_shutdown,
    )
    app.state.agent = agent
    publish_contract(app, AGENT_ERRORS)
    install_error_handlers(app, AGENT_ERRORS)
    app.add_api_route("/healthz", healthz, methods=["GET"], response_model=Health)
    for route in V1_ROUTES:
        app.add_api_route(f"/v1{route.path}", route.endpoint, methods=[route.method],
                          dependencies=[Depends(authorized)], **route.options)  # fmt: skip
    return app


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (the only place the agent may listen)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
