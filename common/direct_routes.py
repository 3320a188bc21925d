"""FastAPI routes whose endpoints read their own request (the body through `http_contract`),
called without FastAPI's per-request parameter solving.

For such an endpoint FastAPI still builds, on every request, a sub-response for headers and
cookies, the query parameters, the cookies, two exit stacks (for dependencies with `yield`) and
a pydantic validation of each path parameter, to pass it a plain string it could not refuse:
about a third of the API's CPU per enqueue, measured (docs/benchmarks.md). `DirectRoute` calls
the endpoint with the path parameters as Starlette matched them and the `Request`, through
Starlette's own request wrapper, and sends its response as is. Routing, the published OpenAPI,
the app's middleware and exception handlers stay FastAPI's.

It takes only what it can call exactly as FastAPI would: an async endpoint, annotated to return
a `Response`, whose parameters are the `Request` and path parameters typed `str` without
constraints (description and schema hints are fine, they validate nothing). Any other endpoint
on a `DirectRoute` gets FastAPI's own handler, so using the class never changes what an
endpoint receives.

It trusts the return annotation: what the endpoint returns is sent as a `Response` without a
check per request, so an endpoint annotated `-> Response` that returns data fails at Starlette
(500) where FastAPI would have serialized it (tests/unit/test_direct_routes.py checks the queue
API's direct endpoints). It also skips any per-route FastAPI feature it does not know of, which
is why pyproject bounds FastAPI to the versions it was checked against.

Not for: endpoints with dependencies, query, header, cookie or body parameters, a route body
limit of their own, or returning data for FastAPI to serialize.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        handler = direct_handler(self)
        if handler is not None:
            # Starlette's wrapper (the request, the app's exception handlers): FastAPI's adds two
            # exit stacks per request, for dependencies with `yield`, which this endpoint has not.
            self.app = request_response(handler)

    def get_route_handler(self) -> Handler:
        return direct_handler(self) or super().get_route_handler()


def direct_handler(route: APIRoute) -> Handler | None:
    """A handler calling `route`'s endpoint directly, or None when FastAPI must solve its
    parameters (see the module docstring)."""
    dependant = route.dependant
    endpoint = dependant.call
    if (
        endpoint is None
        or not inspect.iscoroutinefunction(endpoint)
        or not _returns_response(endpoint)
        or route.body_field is not None
        or route.dependencies
        or route.max_body_size is not None
        or dependant.dependencies
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or not all(_plain_string(field) for field in dependant.path_params)
    ):
        return None
    path_names = [(field.name, field.alias) for field in dependant.path_params]
    request_name = dependant.request_param_name

    async def handler(request: Request) -> Response:
        path = request.path_params
        arguments: dict[str, Any] = {name: path[alias] for name, alias in path_names}
        if request_name is not None:
            arguments[request_name] = request
        return await endpoint(**arguments)

    return handler


def _returns_response(endpoint: Callable[..., Any]) -> bool:
    try:
        returned = get_type_hints(endpoint).get("return")
    except Exception:  # a hint that does not resolve: let FastAPI handle the endpoint
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def _plain_string(field: Any) -> bool:
    """A path parameter FastAPI would pass on unchanged: `str`, no validating constraint."""
    return field.field_info.annotation is str and not field.field_info.metadata
