"""What every route of the controller's API is given: the node's parts (`NodeApi`, put on the
app by `create_app`), the bearer-token check of the mutating endpoints (`mutating`), the body
limit, and the API's refusal (`ApiError`).

Not for: any one endpoint (see the sibling modules) or the error handlers
(`common.http_contract`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from common.http_contract import answers, credential, json_request_body, same_secret
from lazarus_lite.controller import ControllerNode
from lazarus_lite.coordination.interface import CoordinationStore, WorkflowRecords
from lazarus_lite.errors import ApiError
from lazarus_lite.settings import ControllerSettings

MAX_BODY_BYTES = 256 * 1024
BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="the node's API token (`--api-token`)")  # fmt: skip


@dataclass(frozen=True)
class NodeApi:
    """The parts of one controller node its routes work on."""

    settings: ControllerSettings
    node: ControllerNode
    store: CoordinationStore

    @property
    def workflows(self) -> WorkflowRecords:
        return self.store.workflows


def node_api(request: Request) -> NodeApi:
    """The route's dependency: the `NodeApi` of the app that answers."""
    api: NodeApi = request.app.state.api
    return api


def require_token(request: Request, token: str) -> None:
    """Mutating endpoints need `Authorization: Bearer <token>`; anything else is a 401."""
    if not same_secret(credential(request, "bearer"), token):
        raise ApiError(401, "unauthorized", "a valid bearer token is required")


def authorized(request: Request, _: object = Security(BEARER)) -> None:
    require_token(request, node_api(request).settings.api_token)


def mutating(
    router: APIRouter,
    path: str,
    body: type[BaseModel] | dict[str, Any],
    success: dict[int, type[BaseModel] | None],
    *errors: int,
    status_code: int = 200,
) -> Callable[[Callable], Callable]:
    """A POST behind the token (a dependency: checked before anything else), with its body
    and its answers: 400, 401, 413 and 503 besides `errors`."""
    return router.post(path, status_code=status_code, response_model=None,
                       dependencies=[Depends(authorized)], openapi_extra=json_request_body(body),
                       responses=answers(success, 400, 401, 413, 503, *errors))  # fmt: skip
