"""What every HTTP service of the project (the queue API, the controllers' REST, the fault agent)
answers to a request it cannot serve, and how its published OpenAPI says so.

- Errors: each service has one error envelope (`ErrorShape`; the project's is
  `{"error": {"code", "message"}}`), and `install_error_handlers` answers in it also for the
  framework's own refusals: an unknown path is a 404, another method on a known path a 405
  with `Allow`, a parameter that does not parse a 400 naming it, a `ServiceError` its own
  status (503 with `Retry-After` when retrying may help), anything unexpected a 500 that shows
  no traceback. No message is longer than `MAX_MESSAGE` characters.
- Bodies: `read_json_body` reads at most `max_bytes` (else 413) and parses strict JSON
  (`bounded_json`, as files are): no NaN or Infinity, no number a float cannot hold, no
  integer of over 4300 digits, no nesting deeper than `MAX_JSON_DEPTH`, and here also no lone
  UTF-16 surrogate (else a 400); `read_json_model` validates it as a body model (a 400 naming
  each field). Body models derive from `JsonBody` (unknown fields refused, nothing coerced)
  and count with `JsonInt`.
- Secrets: `credential` and `same_secret` compare as bytes, so a header with non-ASCII text is
  a plain mismatch (401), not a crash; the secrets themselves are visible ASCII
  (`validation.HeaderSecret`), which reads the same however a header is decoded.
- OpenAPI: `json_request_body`, `error_responses` and `publish_contract` declare the request
  bodies the handlers parse themselves and every error status with its envelope, and replace
  FastAPI's default 422 (these services answer 400), so a schema-driven client or fuzzer sees
  the real contract.

Not for: what any service does, its settings, or checks of meaning (a phone number, an event,
an attack command: each service validates its own and raises `InvalidRequest`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from common import bounded_json
from common.errors import InvalidRequest, JsonProblem, JsonTooDeep, ServiceError
from common.validation import describe_problems, quoted

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)

# Deeper JSON is refused: the response serializer has a depth limit of its own, and a message it
# could not serialize would fail every dequeue that leased it (and the others leased with it).
MAX_JSON_DEPTH = 64
# An error message names the field and what was expected; a value it quotes is clipped, and the
# whole message cut to MAX_MESSAGE characters as a backstop.
MAX_MESSAGE = 1000

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


# -- envelopes ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """The project's error envelope (DESIGN.md, "Ratequeue HTTP API")."""

    error: ErrorDetail


def project_envelope(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class ErrorShape:
    """How one service spells an error: the model its OpenAPI publishes, and the body from
    (status, code, message, field at fault)."""

    model: type[BaseModel]
    render: Callable[[int, str, str, str | None], dict[str, Any]]

    def response(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        if len(message) > MAX_MESSAGE:
            message = f"{message[: MAX_MESSAGE - 1]}…"
        body = self.render(status, code, message, field)
        return JSONResponse(body, status_code=status, headers=headers)


PROJECT_ERRORS = ErrorShape(ErrorEnvelope, project_envelope)


def _allowed_methods(request: Request) -> list[str]:
    """Every method served at this path's template (Starlette's 405 names only the first
    route's), not those of another template that also matches (`/attacks/{guid}` for
    `/attacks/active`)."""
    routes = request.app.router.routes
    matching = [r for r in routes if r.matches(request.scope)[0] is not Match.NONE]
    template = getattr(matching[0], "path", None) if matching else None
    methods: set[str] = set()
    for route in matching:
        if getattr(route, "path", None) == template:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI, shape: ErrorShape = PROJECT_ERRORS) -> None:
    """Answer every refusal (the service's own and the framework's) in `shape`."""

    @app.exception_handler(ServiceError)
    async def on_refusal(request: Request, error: ServiceError) -> JSONResponse:
        headers = None
        if error.retry_after_seconds is not None:
            headers = {"Retry-After": str(error.retry_after_seconds)}
        return shape.response(error.http_status, error.code, error.message, error.field, headers)

    @app.exception_handler(RequestValidationError)
    async def on_bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        return shape.response(400, "invalid_request", describe_problems(error, request=True))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = quoted(request.url.path)
        if error.status_code == 404:
            return shape.response(404, "not_found", f"nothing is served at {path}")
        if error.status_code == 405:
            # Starlette's own header is the fallback, for routes this cannot see into.
            starlette_allow = (error.headers or {}).get("Allow", "")
            allowed = _allowed_methods(request) or starlette_allow.split(", ")
            return shape.response(
                405,
                "method_not_allowed",
                f"{quoted(request.method)} is not served at {path}; allowed: {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return shape.response(error.status_code, "http_error", str(error.detail),
                              headers=error.headers)  # fmt: skip

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return shape.response(500, "internal", "internal error; see the service log")


# -- bodies ------------------------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """Strict JSON (see the module docstring); raises InvalidRequest (400) saying what is wrong."""
    try:
        return bounded_json.loads_bytes(raw, max_depth=MAX_JSON_DEPTH)
    except JsonTooDeep as problem:
        raise InvalidRequest(f"request body is {problem.problem}") from None
    except JsonProblem as problem:
        raise InvalidRequest(f"request body is not valid JSON: {problem}",
                             code="bad_json") from None  # fmt: skip


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read to at most `max_bytes` (413 beyond) and parsed strictly."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequest(
            f"request body is {quoted(declared)} bytes; the limit is {max_bytes}",
            code="body_too_large", http_status=413,
        )  # fmt: skip
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise InvalidRequest(
                f"request body exceeds the limit of {max_bytes} bytes",
                code="body_too_large", http_status=413,
            )  # fmt: skip
    return parse_json(bytes(raw))


async def read_json_model(request: Request, model: type[Body], max_bytes: int) -> Body:
    """The request's JSON body (see `read_json_body`) as `model`: a body that is not a JSON
    object, or does not validate, is an InvalidRequest (400) naming each field at fault."""
    data = await read_json_body(request, max_bytes)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidRequest(describe_problems(error), code="invalid_request") from None


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class JsonBody(BaseModel):
    """A request body: no field the schema does not name, and no coercion (`"30"` is not a
    number, `0` not a boolean), so what is accepted is exactly what the schema publishes."""

    model_config = ConfigDict(extra="forbid", strict=True)


# An integer field of a JSON body: JSON has one number type, and JSON Schema's `integer` (what
# the OpenAPI publishes) is any number without a fraction, so 2.0 is 2; "2" and true are not.
JsonInt = Annotated[int, BeforeValidator(_whole), Strict()]


# -- secrets -----------------------------------------------------------------------------------


def credential(request: Request, scheme: str) -> str | None:
    """The value of `Authorization: <scheme> <value>` (scheme compared without case), or None."""
    given, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if given.lower() == scheme.lower() else None


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison; `compare_digest` on str refuses non-ASCII, bytes never do.
    `expected` is visible ASCII (the settings refuse other secrets: `HeaderSecret`), so a
    header Starlette decoded as latin-1 compares as the bytes the client sent."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


# -- the published contract --------------------------------------------------------------------


def _inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with every `#/$defs/...` reference replaced by its definition (the request
    models here are not recursive), so it stands alone inside an operation."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline_refs(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inline_refs(item, defs) for item in schema]
    return schema


def json_request_body(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that parses its body itself: the body's JSON Schema."""
    schema = model if isinstance(model, dict) else model.model_json_schema()
    schema = _inline_refs(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def error_responses(shape: ErrorShape, statuses: Iterable[int]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the service's error envelope, always JSON
    (a `model` would take the route's media type, text/plain for a route that answers text)."""
    envelope = {"$ref": f"#/components/schemas/{shape.model.__name__}"}
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answer: dict[str, Any] = {
            "description": REASONS.get(status, "error"),
            "content": {"application/json": {"schema": envelope}},
        }
        if status == 503:
            answer["headers"] = RETRY_AFTER
        answers[status] = answer
    return answers


def answers(
    success: dict[int, type[BaseModel] | None],
    *errors: int,
    shape: ErrorShape = PROJECT_ERRORS,
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: its successes (with the model of each body, if it has one)
    and its errors."""
    declared: dict[int | str, dict[str, Any]] = {
        status: {"description": "done", **({"model": model} if model else {})}
        for status, model in success.items()
    }
    return {**declared, **error_responses(shape, errors)}


def _replace_default_validation_answer(schema: dict[str, Any], shape: ErrorShape) -> None:
    """FastAPI documents a 422 `HTTPValidationError` wherever it validates parameters; these
    services answer such a request with a 400 in their own envelope instead."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            default = responses.get("422", {}).get("content", {}).get("application/json", {})
            if default.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
                responses.setdefault("400", error_responses(shape, [400])[400])
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def publish_contract(app: FastAPI, shape: ErrorShape = PROJECT_ERRORS) -> None:
    """Make `app.openapi()` publish what the handlers installed above really answer."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _replace_default_validation_answer(schema, shape)
            components = schema.setdefault("components", {})
            envelope = shape.model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.setdefault("schemas", {}).update(envelope.pop("$defs", {}))
            components["schemas"][shape.model.__name__] = envelope
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
