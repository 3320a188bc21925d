"""The ratequeue HTTP API (see DESIGN.md, "Ratequeue HTTP API"), a thin layer over the client.

Every error is JSON `{"error": {"code", "message"}}`: bad input is a 4xx and writes nothing, an
unreachable or not-yet-durable shard is a 503 with Retry-After, and nothing answers with a
traceback. Not for: queue logic (the Lua scripts) or routing (the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ratequeue.client import AsyncRatequeueClient, validate_message_id
from ratequeue.config import ServiceSettings
from ratequeue.errors import (
    DurabilityNotMet,
    IdConflict,
    InvalidInput,
    QueueFull,
    RatequeueError,
    RetryableError,
)
from ratequeue.metrics import ServiceMetrics
from ratequeue.rates import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND, Rate
from ratequeue.shard import ShardStats, parse_receipt
from ratequeue.topology import topology_json
from ratequeue.write_failures import WriteFailureReporter

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    body: Any = Field(..., description="any JSON; its text (a string, or `text`) sets segments")


class DequeueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max: int = Field(..., ge=1, strict=True)
    lease_seconds: float = Field(..., gt=0)


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipts: list[str] = Field(..., max_length=10_000)


class RateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_second: float = Field(..., ge=MIN_PER_SECOND, le=MAX_PER_SECOND)
    burst: int = Field(1, ge=1, le=MAX_BURST, strict=True)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def _describe(error: ValidationError | RequestValidationError) -> str:
    parts = []
    for problem in error.errors():
        location = ".".join(str(p) for p in problem["loc"] if p != "body") or "body"
        parts.append(f"field '{location}': {problem['msg']}")
    return "; ".join(parts)


# Deeper JSON is refused: the response serializer has a depth limit of its own, and a message it
# could not serialize would fail every dequeue that leased it (and the others leased with it).
MAX_JSON_DEPTH = 64


def _not_json(constant: str) -> None:
    """`json.loads` takes NaN and Infinity; JSON has neither (and they cannot be answered)."""
    raise InvalidInput(f"request body is not valid JSON: {constant} is not a JSON value",
                       code="bad_json")  # fmt: skip


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400, which float() makes infinite
        raise InvalidInput(f"request body: number {text} is out of range", code="bad_json")
    return value


def _nesting_exceeds(value: Any, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            pending += [(child, depth + 1) for child in item]
    return False


def _iso_time(seconds: float) -> str:
    """RFC 3339 UTC; a time past what a datetime can hold is shown as the largest one."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC).isoformat()


async def read_json(request: Request, model: type[M], max_bytes: int) -> M:
    """Parse and validate a JSON request body within the size limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(
            f"request body is {declared} bytes; the limit is {max_bytes}",
            code="body_too_large", http_status=413,
        )  # fmt: skip
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise InvalidInput(
                f"request body exceeds the limit of {max_bytes} bytes",
                code="body_too_large", http_status=413,
            )  # fmt: skip
    too_deep = InvalidInput(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except ValueError as error:  # also bad UTF-8, and integers of over 4300 digits
        raise InvalidInput(f"request body is not valid JSON: {error}", code="bad_json") from None
    except RecursionError:
        raise too_deep from None
    if _nesting_exceeds(data, MAX_JSON_DEPTH):
        raise too_deep
    try:
        # A lone surrogate (`"\ud800"`) parses, but can be neither counted nor stored.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidInput("request body holds a string with a lone UTF-16 surrogate",
                           code="bad_json") from None  # fmt: skip
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(_describe(error), code="invalid_request") from None


def create_app(settings: ServiceSettings) -> FastAPI:
    metrics = ServiceMetrics()
    client = AsyncRatequeueClient(settings.control_url, settings.client_settings())
    reporter = WriteFailureReporter(
        aioredis.Redis.from_url(settings.control_url, socket_timeout=1, socket_connect_timeout=1)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.start(require_topology=False)
        yield
        await client.close()
        await reporter.control.aclose()

    app = FastAPI(title="ratequeue", version="1", lifespan=lifespan)
    app.state.client = client
    app.state.metrics = metrics

    # -- errors ----------------------------------------------------------------------------
    @app.exception_handler(RatequeueError)
    async def on_ratequeue_error(request: Request, error: RatequeueError) -> JSONResponse:
        headers = None
        if isinstance(error, RetryableError):
            headers = {"Retry-After": str(error.retry_after_seconds)}
        return error_response(error.http_status, error.code, error.message, headers)

    @app.exception_handler(RedisError)
    async def on_redis_error(request: Request, error: RedisError) -> JSONResponse:
        log.warning("redis error: %s", error)
        return error_response(
            503, "backend_unavailable", f"storage unavailable: {error}", {"Retry-After": "1"}
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", _describe(error))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; see the service log")

    # -- queue -----------------------------------------------------------------------------
    @app.post("/v1/numbers/{number}/messages", status_code=201)
    async def enqueue(number: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            payload = await read_json(request, EnqueueRequest, settings.max_body_bytes)
            if payload.id is not None:
                try:
                    validate_message_id(payload.id)
                except InvalidInput as error:
                    raise InvalidInput(f"field 'id': {error.message}", code=error.code) from None
            message = client.prepare(number, payload.body, payload.id)
            enqueued = await client.enqueue_many([message])
        except InvalidInput:
            metrics.enqueued.labels("invalid").inc()
            raise
        result = enqueued[0]
        if isinstance(result, QueueFull | IdConflict):
            metrics.enqueued.labels("full" if isinstance(result, QueueFull) else "conflict").inc()
            raise result
        if isinstance(result, Exception):
            if isinstance(result, DurabilityNotMet):
                metrics.wait_failures.inc()
            metrics.enqueued.labels("unavailable").inc()
            with contextlib.suppress(RatequeueError):  # no topology: no shard to report on
                await reporter.failed(client.shard_for(message.number).id, result)
            raise result
        await reporter.succeeded(result.shard)
        metrics.enqueued.labels("duplicate" if result.duplicate else "acknowledged").inc()
        metrics.latency.labels("enqueue").observe(time.perf_counter() - started)
        return JSONResponse(
            {
                "id": result.id,
                "number": result.number,
                "shard": result.shard,
                "duplicate": result.duplicate,
            },
            status_code=201,
        )

    @app.post("/v1/messages:dequeue")
    async def dequeue(request: Request) -> dict:
        started = time.perf_counter()
        payload = await read_json(request, DequeueRequest, settings.max_body_bytes)
        if payload.max > settings.max_dequeue:
            raise InvalidInput(f"field 'max': must be at most {settings.max_dequeue}")
        if payload.lease_seconds > settings.max_lease_seconds:
            raise InvalidInput(
                f"field 'lease_seconds': must be at most {settings.max_lease_seconds:g}",
                code="invalid_lease",
            )
        leased = await client.dequeue(payload.max, payload.lease_seconds)
        metrics.dequeued.inc(len(leased))
        metrics.latency.labels("dequeue").observe(time.perf_counter() - started)
        return {
            "messages": [
                {
                    "id": m.id,
                    "number": m.number,
                    "body": m.body,
                    "receipt": m.receipt,
                    "attempt": m.attempt,
                }
                for m in leased
            ]
        }

    @app.post("/v1/messages:ack")
    async def ack(request: Request) -> dict:
        started = time.perf_counter()
        payload = await read_json(request, AckRequest, settings.max_body_bytes)
        for index, receipt in enumerate(payload.receipts):
            try:
                parse_receipt(receipt)
            except ValueError as error:
                raise InvalidInput(f"field 'receipts.{index}': {error}",
                                   code="invalid_receipt") from None  # fmt: skip
        acked = await client.ack(payload.receipts)
        metrics.acked.inc(acked)
        metrics.latency.labels("ack").observe(time.perf_counter() - started)
        return {"acked": acked}

    # -- numbers ---------------------------------------------------------------------------
    @app.get("/v1/numbers/{number}")
    async def number_info(number: str) -> dict:
        info = await client.number_info(number)
        return {
            "number": info.number,
            "type": info.type,
            "shard": info.shard,
            "depth": info.depth,
            "held_segments": info.held_segments,
            "capacity_segments": info.capacity_segments,
            "rate": {
                "per_second": info.rate.per_second,
                "burst": info.rate.burst,
                "source": info.rate_source,
            },
            "next_eligible_at": _iso_time(info.next_eligible_at),
        }

    @app.put("/v1/numbers/{number}/rate")
    async def set_rate(number: str, request: Request) -> dict:
        payload = await read_json(request, RateRequest, settings.max_body_bytes)
        if math.floor(payload.per_second * settings.max_queue_seconds) < 1:
            raise InvalidInput(
                f"field 'per_second': {payload.per_second:g}/s would let the queue hold no "
                f"segment ({settings.max_queue_seconds:g} s of sending); at least "
                f"{1 / settings.max_queue_seconds:.3g}/s is needed"
            )
        rate = Rate(per_second=payload.per_second, burst=payload.burst)
        shard = await client.set_rate(number, rate)
        return {"number": number, "shard": shard, "per_second": rate.per_second,
                "burst": rate.burst}  # fmt: skip

    @app.get("/v1/topology")
    async def topology() -> dict:
        return topology_json(client.topology)

    # -- operations ------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        control_ok = await client.control_store_reachable()
        detail = "reachable" if control_ok else "unreachable; using the cached topology"
        checks = [check("control_store", control_ok, detail)]
        try:
            current = client.topology
        except RatequeueError as error:
            checks.append(check("topology", False, error.message))
            return JSONResponse({"in_load_balancer": False, "checks": checks}, status_code=503)
        age = client.topology_age
        checks.append(check("topology", True, f"epoch {current.epoch}, {age:.1f} s old"))
        stats = await client.shard_stats()
        for shard_id, stat in stats.items():
            ok = isinstance(stat, ShardStats)
            checks.append(check(f"shard:{shard_id}", ok, "primary answers" if ok else str(stat)))
        # In the balancer while this instance can serve at least one shard: a down shard is
        # equally down for every instance, so leaving the balancer would only hurt the others.
        serving = any(isinstance(stat, ShardStats) for stat in stats.values())
        return JSONResponse(
            {"in_load_balancer": serving, "checks": checks}, status_code=200 if serving else 503
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        try:
            metrics.topology_epoch.set(client.topology.epoch)
            stats = await asyncio.wait_for(client.shard_stats(), timeout=2.0)
        except (RatequeueError, TimeoutError):
            stats = {}
        for shard_id, stat in stats.items():
            up = isinstance(stat, ShardStats)
            metrics.shard_up.labels(shard_id).set(1 if up else 0)
            if up:
                metrics.shard_messages.labels(shard_id).set(stat.messages)
                metrics.shard_leased.labels(shard_id).set(stat.leased)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
