"""The ratequeue HTTP API (see DESIGN.md, "Ratequeue HTTP API"), a thin layer over the client.

Every error is JSON `{"error": {"code", "message"}}`: bad input is a 4xx and writes nothing, an
unreachable or not-yet-durable shard is a 503 with Retry-After, and nothing answers with a
traceback (`common.http_contract` installs the handlers and the body limits). The published
OpenAPI declares each request body and every status an operation answers. Not for: queue logic
(the Lua scripts) or routing (the client).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, get_type_hints

import redis.asyncio as aioredis
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel, Field, ValidationError, create_model
from redis.exceptions import RedisError

from common.direct_routes import DirectRoute
from common.errors import InvalidRequest
from common.etcd_client import EtcdClient
from common.http_contract import (
    MAX_MESSAGE,
    PROJECT_ERRORS,
    RETRY_AFTER,
    ErrorDetail,
    ErrorEnvelope,
    JsonBody,
    JsonInt,
    answers,
    install_error_handlers,
    json_request_body,
    publish_contract,
    read_json_model,
)
from common.metrics_exposition import metrics_response
from common.validation import bounded, describe_problems
from ratequeue.client import (
    MESSAGE_ID,
    AsyncRatequeueClient,
    Enqueued,
    NumberInfo,
    validate_message_id,
)
from ratequeue.coalescing import EnqueueCoalescer
from ratequeue.config import ServiceSettings
from ratequeue.errors import (
    DurabilityNotMet,
    EnqueueBacklogFull,
    IdConflict,
    InvalidInput,
    InvalidNumber,
    MessageTooLarge,
    QueueFull,
    RatequeueError,
    RetryableError,
    ShardFull,
)
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.metrics import ServiceMetrics
from ratequeue.numbers import MAX_RAW_LENGTH, NUMBER_PATTERN, normalize_number
from ratequeue.rates import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND, Rate
from ratequeue.sentinel_topology import SentinelTopologySource, majority
from ratequeue.shard import RECEIPT_PATTERN, OutgoingMessage, ShardStats, parse_receipt
from ratequeue.topology import EPOCH_TAKEN_AT_HEADER, Topology, topology_json
from ratequeue.write_failures import WriteFailureReporter

log = logging.getLogger(__name__)

NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

# The path parameter as published: the pattern only describes, `normalize_number` decides (and
# names the accepted forms in its 400).
Number = Annotated[
    str,
    Path(description="E.164, a North American number, or a short code; separators allowed",
         json_schema_extra={"pattern": NUMBER_PATTERN, "maxLength": MAX_RAW_LENGTH}),
]  # fmt: skip


class EnqueueRequest(JsonBody):
    id: str | None = Field(None, json_schema_extra={"pattern": MESSAGE_ID.pattern})
    body: Any = Field(..., description="any JSON; its text (a string, or `text`) sets segments")


class BatchMessage(JsonBody):
    number: str = Field(
        ..., json_schema_extra={"pattern": NUMBER_PATTERN, "maxLength": MAX_RAW_LENGTH}
    )
    id: str | None = Field(None, json_schema_extra={"pattern": MESSAGE_ID.pattern})
    body: Any = Field(..., description="any JSON; its text (a string, or `text`) sets segments")


class BatchRequest(JsonBody):
    """The batch as published and read: its messages are any JSON values here because each is
    checked on its own (as `BatchMessage`), so a malformed one is refused in its own result
    (422) and the others are queued."""

    messages: list[Any] = Field(
        ...,
        min_length=1,
        description='messages, each {"number", "id"?, "body"} as the single enqueue takes them; '
        "results[i] answers messages[i]",
    )


class DequeueRequest(JsonBody):
    max: JsonInt = Field(..., ge=1)
    lease_seconds: float = Field(..., gt=0)


class AckRequest(JsonBody):
    receipts: list[Annotated[str, Field(json_schema_extra={"pattern": RECEIPT_PATTERN})]] = Field(
        ..., max_length=10_000
    )


class RateRequest(JsonBody):
    per_second: float = Field(..., ge=MIN_PER_SECOND, le=MAX_PER_SECOND)
    burst: JsonInt = Field(1, ge=1, le=MAX_BURST)


# -- answers, as published -------------------------------------------------------------------


class EnqueuedAnswer(BaseModel):
    id: str
    number: str
    shard: str
    duplicate: bool


class RetryWithTheId(ErrorEnvelope):
    """A 503 to an enqueue: the message may be queued already. Retried with `id` (the one
    given, or the one made up for it here), it is queued once whatever happened."""

    id: str


# An enqueue's 503, as the OpenAPI document publishes it.
RETRY_ENQUEUE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Service Unavailable", "model": RetryWithTheId, "headers": RETRY_AFTER}
}


def storage_unavailable(error: RedisError) -> str:
    """What a 503 `backend_unavailable` says of a redis error the client does not map."""
    return f"storage unavailable: {error}"


def retry_with_the_id(error: RetryableError | RedisError, message_id: str) -> JSONResponse:
    """An enqueue's 503 (see RetryWithTheId)."""
    if isinstance(error, RetryableError):
        code, text, retry_after = error.code, error.message, error.retry_after_seconds
    else:
        code, text, retry_after = "backend_unavailable", storage_unavailable(error), 1
    body = {"error": {"code": code, "message": bounded(text, MAX_MESSAGE)}, "id": message_id}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


class BatchResult(BaseModel):
    """One message's result: 201 with what the single enqueue answers, or its own error: 409
    id_conflict, 413 message_too_large, 422 for a malformed message, 429 queue_full, 503 (it
    may be queued already: retry it with `id`, made up here when the message had none), 507
    shard_full. Every result but a 413 or 422 (a message not read) names the message's `id`
    and canonical `number`."""

    index: int
    status: int
    id: str | None = None
    number: str | None = None
    shard: str | None = None
    duplicate: bool | None = None
    error: ErrorDetail | None = None


class BatchAnswer(BaseModel):
    results: list[BatchResult]


class LeasedAnswer(BaseModel):
    id: str
    number: str
    body: Any
    receipt: str
    attempt: int
    leased_at: str = Field(json_schema_extra={"format": "date-time"})
    """When its shard leased it (RFC 3339, to the millisecond): what a rate check judges."""


class DequeuedAnswer(BaseModel):
    messages: list[LeasedAnswer]


class AckedAnswer(BaseModel):
    acked: int


class RateAnswer(BaseModel):
    per_second: float
    burst: int
    source: str


# The client's NumberInfo as JSON: its fields, but the rate with its source and the next
# eligible time as RFC 3339 text. Derived, so a field NumberInfo gains is published (and the
# fuzz run notices when number_info does not answer it).
_AS_IS = {name: (kind, ...) for name, kind in get_type_hints(NumberInfo).items()
          if name not in ("rate", "rate_source", "next_eligible_at")}  # fmt: skip
NumberAnswer = create_model(
    "NumberAnswer",
    **_AS_IS,
    rate=(RateAnswer, ...),
    next_eligible_at=(str, Field(json_schema_extra={"format": "date-time"})),
)


class RateSetAnswer(BaseModel):
    number: str
    shard: str
    per_second: float
    burst: int


class HealthCheck(BaseModel):
    name: str
    ok: bool
    detail: str


class HealthAnswer(BaseModel):
    in_load_balancer: bool
    checks: list[HealthCheck]


def _smallest_rate(max_queue_seconds: float) -> float:
    """The least per_second `set_rate` accepts: the floor, or what makes the queue hold one
    segment (computed the way the check below computes it, float rounding and all)."""
    rate = max(MIN_PER_SECOND, 1 / max_queue_seconds)
    while math.floor(rate * max_queue_seconds) < 1:
        rate = math.nextafter(rate, math.inf)
    return rate


def _with_bounds(model: type[BaseModel], **bounds: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON Schema with per-field keywords that depend on the settings."""
    schema = model.model_json_schema()
    for field, keywords in bounds.items():
        schema["properties"][field].update(keywords)
    return schema


# The enqueue metric's label for a message its shard refused (anything else: "invalid").
_REFUSAL_LABEL: dict[type[RatequeueError], str] = {
    QueueFull: "full",
    IdConflict: "conflict",
    ShardFull: "shard_full",
}


def check(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def _iso_time(seconds: float) -> str:
    """RFC 3339 UTC; a time past what a datetime can hold is shown as the largest one."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC).isoformat()


def create_app(settings: ServiceSettings, *, metrics_dir: FilePath | None = None) -> FastAPI:
    """The API over its own client (connections and topology watch). `metrics_dir`: the
    directory every worker process writes its metrics to (`ratequeue.workers`)."""
    metrics = ServiceMetrics(metrics_dir)
    etcd = (
        EtcdClient.from_setting(settings.etcd_endpoints)
        if settings.topology_backend == "etcd"
        else None
    )
    sentinel = (
        SentinelTopologySource.over_control_store(
            settings.control_url, settings.sentinel_addresses()
        )
        if settings.topology_backend == "sentinel"
        else None
    )
    client = AsyncRatequeueClient(
        settings.control_url,
        settings.client_settings(),
        topology=EtcdTopologyStore(etcd) if etcd is not None else sentinel,
    )
    coalescer = EnqueueCoalescer(client)
    # Each label's child looked up once: `labels()` takes a lock and checks the labels per call.
    enqueue_outcome = functools.cache(metrics.enqueued.labels)
    request_latency = functools.cache(metrics.latency.labels)
    reporter = WriteFailureReporter(
        aioredis.Redis.from_url(settings.control_url, socket_timeout=1, socket_connect_timeout=1)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.start(require_topology=False)
        yield
        await client.close()
        if etcd is not None:
            await etcd.aclose()
        if sentinel is not None:
            await sentinel.aclose()
        await reporter.drain()
        await reporter.control.aclose()

    # No OpenTelemetry: FastAPI would otherwise look up the global providers on every request.
    app = FastAPI(title="ratequeue", version="1", lifespan=lifespan, telemetry=NO_TELEMETRY)
    app.router.route_class = DirectRoute
    app.state.client = client
    app.state.metrics = metrics
    publish_contract(app)

    # -- errors ----------------------------------------------------------------------------
    install_error_handlers(app)

    @app.exception_handler(RedisError)
    async def on_redis_error(request: Request, error: RedisError) -> JSONResponse:
        log.warning("redis error: %s", error)
        message = storage_unavailable(error)
        return PROJECT_ERRORS.response(503, "backend_unavailable", message,
                                       headers={"Retry-After": "1"})  # fmt: skip

    # -- queue -----------------------------------------------------------------------------
    @app.post(
        "/v1/numbers/{number}/messages",
        status_code=201,
        response_model=None,
        openapi_extra=json_request_body(EnqueueRequest),
        responses={**answers({201: EnqueuedAnswer}, 400, 409, 413, 429, 507), **RETRY_ENQUEUE},
    )
    async def enqueue(number: Number, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            payload = await read_json_model(request, EnqueueRequest, settings.max_body_bytes)
            if payload.id is not None:
                try:
                    validate_message_id(payload.id)
                except InvalidInput as error:
                    raise InvalidInput(f"field 'id': {error.message}", code=error.code) from None
            message = client.prepare(number, payload.body, payload.id)
        except InvalidRequest:
            enqueue_outcome("invalid").inc()
            raise
        result = await coalescer.enqueue(message)
        if isinstance(result, QueueFull | IdConflict):
            enqueue_outcome("full" if isinstance(result, QueueFull) else "conflict").inc()
            raise result
        if isinstance(result, ShardFull):  # no failover makes room: not a write failure to report
            enqueue_outcome("shard_full").inc()
            raise result
        if isinstance(result, EnqueueBacklogFull):  # refused here, never sent: nothing to report
            enqueue_outcome("backlog_full").inc()
            return retry_with_the_id(result, message.id)
        if isinstance(result, InvalidInput):  # a message its shard's script could not read
            enqueue_outcome("invalid").inc()
            raise result
        if isinstance(result, Exception):
            if isinstance(result, DurabilityNotMet):
                metrics.wait_failures.inc()
            enqueue_outcome("unavailable").inc()
            with contextlib.suppress(RatequeueError):  # no topology: no shard to report on
                await reporter.failed(client.shard_for(message.number).id, result)
            # It may be queued already: the answer names its id (made up here if the producer
            # gave none), so a retry with it cannot queue it twice.
            if isinstance(result, RetryableError | RedisError):
                return retry_with_the_id(result, message.id)
            raise result
        await reporter.succeeded(result.shard)
        enqueue_outcome("duplicate" if result.duplicate else "acknowledged").inc()
        request_latency("enqueue").observe(time.perf_counter() - started)
        return JSONResponse(
            {
                "id": result.id,
                "number": result.number,
                "shard": result.shard,
                "duplicate": result.duplicate,
            },
            status_code=201,
        )

    def prepare_batch_message(index: int, item: Any) -> OutgoingMessage:
        """One message of a batch, validated and encoded; an InvalidRequest names its index."""
        where = f"messages.{index}"
        if not isinstance(item, dict):
            raise InvalidInput(f"field '{where}': must be a JSON object with number, body and "
                               "optionally id")  # fmt: skip
        try:
            parsed = BatchMessage.model_validate(item)
        except ValidationError as error:
            raise InvalidInput(describe_problems(error, within=where)) from None
        if parsed.id is not None:
            try:
                validate_message_id(parsed.id)
            except InvalidInput as error:
                message = f"field '{where}.id': {error.message}"
                raise InvalidInput(message, code=error.code) from None
        try:
            return client.prepare(parsed.number, parsed.body, parsed.id)
        except InvalidNumber as error:
            raise InvalidNumber(f"field '{where}.number': {error.message}") from None
        except MessageTooLarge as error:  # its message names field 'body'
            raise MessageTooLarge(error.message.replace("'body'", f"'{where}.body'", 1)) from None

    def refusal(index: int, error: RatequeueError | InvalidRequest) -> dict[str, Any]:
        # A malformed message is 422 (the request as a whole was well formed); a body over the
        # limit keeps its 413, as the single enqueue answers it.
        status = 422 if isinstance(error, InvalidRequest) else error.http_status
        if isinstance(error, MessageTooLarge):
            status = error.http_status
        return {"index": index, "status": status,
                "error": {"code": error.code, "message": error.message}}  # fmt: skip

    def unexpected(index: int, message: OutgoingMessage, error: Exception) -> dict[str, Any]:
        if isinstance(error, RedisError):
            status, code, text = 503, "backend_unavailable", storage_unavailable(error)
        else:
            log.error("enqueue of message %s failed unexpectedly", message.id, exc_info=error)
            status, code, text = 500, "internal", "internal error; see the service log"
        return {"index": index, "status": status, "id": message.id, "number": message.number,
                "error": {"code": code, "message": bounded(text, MAX_MESSAGE)}}  # fmt: skip

    @app.post(
        "/v1/messages:batch",
        response_model=None,
        openapi_extra=json_request_body(
            _with_bounds(BatchRequest, messages={"maxItems": settings.max_batch})
        ),
        responses=answers({200: BatchAnswer}, 400, 413, 503),
    )
    async def enqueue_batch(request: Request) -> JSONResponse:
        """Queue up to `max_batch` messages, each answered on its own (`results[i]` for
        `messages[i]`); Retry-After is set when any result is a 503."""
        started = time.perf_counter()
        payload = await read_json_model(request, BatchRequest, settings.max_batch_body_bytes)
        count = len(payload.messages)
        if count > settings.max_batch:
            limit = f"at most {settings.max_batch} per request"
            message = f"field 'messages': {count} messages; {limit}"
            raise InvalidInput(message, code="batch_too_large")
        results: list[dict[str, Any]] = [{}] * count
        # Counted per outcome and added once each: a counter's increment costs a lock and a
        # label lookup (and a file write with several workers), too much per message.
        outcomes_seen: collections.Counter[str] = collections.Counter()
        try:
            indexes, prepared = [], []
            for index, item in enumerate(payload.messages):
                try:
                    prepared.append(prepare_batch_message(index, item))
                    indexes.append(index)
                except InvalidRequest as error:
                    outcomes_seen["invalid"] += 1
                    results[index] = refusal(index, error)
            outcomes = await coalescer.enqueue_many(prepared) if prepared else []
            served: set[str] = set()
            failed: dict[str, Exception] = {}
            for index, message, outcome in zip(indexes, prepared, outcomes, strict=True):
                if isinstance(outcome, Enqueued):
                    served.add(outcome.shard)
                    outcomes_seen["duplicate" if outcome.duplicate else "acknowledged"] += 1
                    results[index] = {"index": index, "status": 201, "id": outcome.id,
                                      "number": outcome.number, "shard": outcome.shard,
                                      "duplicate": outcome.duplicate}  # fmt: skip
                    continue
                if isinstance(outcome, EnqueueBacklogFull):  # refused here, never sent: no report
                    outcomes_seen["backlog_full"] += 1
                elif isinstance(outcome, RetryableError):
                    outcomes_seen["unavailable"] += 1
                    with contextlib.suppress(RatequeueError):  # no topology: no shard to report on
                        failed.setdefault(client.shard_for(message.number).id, outcome)
                elif isinstance(outcome, RatequeueError):
                    outcomes_seen[_REFUSAL_LABEL.get(type(outcome), "invalid")] += 1
                else:
                    # Unexpected (a bug, or an error the client does not map): this message is
                    # answered with it, never every other shard's acknowledgements with it.
                    outcomes_seen["unavailable"] += 1
                    if isinstance(outcome, RedisError):  # a failed write, as the single reports
                        with contextlib.suppress(RatequeueError):
                            failed.setdefault(client.shard_for(message.number).id, outcome)
                    results[index] = unexpected(index, message, outcome)
                    continue
                # Its id too, made up here if the producer gave none: a 503 may have been
                # queued, and only a retry with the same id cannot queue it twice.
                results[index] = {**refusal(index, outcome), "id": message.id,
                                  "number": message.number}  # fmt: skip
        finally:
            for label, seen in outcomes_seen.items():
                enqueue_outcome(label).inc(seen)
        metrics.wait_failures.inc(sum(isinstance(e, DurabilityNotMet) for e in failed.values()))
        for shard_id, error in failed.items():
            await reporter.failed(shard_id, error)
        for shard_id in served - set(failed):
            await reporter.succeeded(shard_id)
        request_latency("enqueue_batch").observe(time.perf_counter() - started)
        retry = any(r["status"] == 503 for r in results)
        return JSONResponse({"results": results}, headers={"Retry-After": "1"} if retry else None)

    @app.post(
        "/v1/messages:dequeue",
        response_model=None,
        openapi_extra=json_request_body(_with_bounds(
            DequeueRequest,
            max={"maximum": settings.max_dequeue},
            lease_seconds={"maximum": settings.max_lease_seconds},
        )),
        responses=answers({200: DequeuedAnswer}, 400, 413, 503),
    )  # fmt: skip
    async def dequeue(request: Request) -> dict:
        started = time.perf_counter()
        payload = await read_json_model(request, DequeueRequest, settings.max_body_bytes)
        if payload.max > settings.max_dequeue:
            raise InvalidInput(f"field 'max': must be at most {settings.max_dequeue}")
        if payload.lease_seconds > settings.max_lease_seconds:
            raise InvalidInput(
                f"field 'lease_seconds': must be at most {settings.max_lease_seconds:g}",
                code="invalid_lease",
            )
        leased = await client.dequeue(payload.max, payload.lease_seconds)
        metrics.dequeued.inc(len(leased))
        request_latency("dequeue").observe(time.perf_counter() - started)
        return {
            "messages": [
                {
                    "id": m.id,
                    "number": m.number,
                    "body": m.body,
                    "receipt": m.receipt,
                    "attempt": m.attempt,
                    "leased_at": _iso_time(m.leased_at),
                }
                for m in leased
            ]
        }

    @app.post(
        "/v1/messages:ack",
        response_model=None,
        openapi_extra=json_request_body(AckRequest),
        responses=answers({200: AckedAnswer}, 400, 413, 503),
    )
    async def ack(request: Request) -> dict:
        started = time.perf_counter()
        # An ack answers a whole dequeue (up to max_dequeue receipts of up to ~150 bytes with
        # long ids): it is held to the batch's body limit, not a single message's.
        payload = await read_json_model(request, AckRequest, settings.max_batch_body_bytes)
        for index, receipt in enumerate(payload.receipts):
            try:
                parse_receipt(receipt)
            except ValueError as error:
                raise InvalidInput(f"field 'receipts.{index}': {error}",
                                   code="invalid_receipt") from None  # fmt: skip
        acked = await client.ack(payload.receipts)
        metrics.acked.inc(acked)
        request_latency("ack").observe(time.perf_counter() - started)
        return {"acked": acked}

    # -- numbers ---------------------------------------------------------------------------
    @app.get(
        "/v1/numbers/{number}",
        response_model=None,
        responses=answers({200: NumberAnswer}, 400, 503),
    )
    async def number_info(number: Number) -> dict:
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

    @app.put(
        "/v1/numbers/{number}/rate",
        response_model=None,
        openapi_extra=json_request_body(_with_bounds(
            RateRequest, per_second={"minimum": _smallest_rate(settings.max_queue_seconds)}
        )),
        responses=answers({200: RateSetAnswer}, 400, 413, 503, 507),
    )  # fmt: skip
    async def set_rate(number: Number, request: Request) -> dict:
        payload = await read_json_model(request, RateRequest, settings.max_body_bytes)
        if math.floor(payload.per_second * settings.max_queue_seconds) < 1:
            raise InvalidInput(
                f"field 'per_second': {payload.per_second:g}/s would let the queue hold no "
                f"segment ({settings.max_queue_seconds:g} s of sending); at least "
                f"{1 / settings.max_queue_seconds:.3g}/s is needed"
            )
        rate = Rate(per_second=payload.per_second, burst=payload.burst)
        shard = await client.set_rate(number, rate)
        return {"number": normalize_number(number), "shard": shard,
                "per_second": rate.per_second, "burst": rate.burst}  # fmt: skip

    @app.get("/v1/topology", response_model=None, responses=answers({200: Topology}, 503))
    async def topology() -> JSONResponse:
        # When this process began routing by the epoch it answers with: a chaos run places
        # the API's switch there, not at the moment it happened to ask (Sentinel writes no
        # record of when the API followed it).
        current = topology_json(client.topology)
        return JSONResponse(
            current, headers={EPOCH_TAKEN_AT_HEADER: f"{client.epoch_taken_at:.6f}"}
        )

    # -- operations ------------------------------------------------------------------------
    @app.get(
        "/healthz",
        response_model=None,
        responses={
            200: {"model": HealthAnswer, "description": "in the load balancer"},
            503: {"model": HealthAnswer, "description": "out of the load balancer"},
        },
    )
    async def healthz() -> JSONResponse:
        checks = await (store_checks() if sentinel is None else sentinel_checks(sentinel))
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

    async def store_checks() -> list[dict]:
        control_ok = await client.control_store_reachable()
        detail = "reachable" if control_ok else "unreachable; using the cached topology"
        return [check("control_store", control_ok, detail)]

    async def sentinel_checks(source: SentinelTopologySource) -> list[dict]:
        # The map's store and the sentinels apart: either failing names itself, not the other.
        store_ok, silent = await asyncio.gather(source.base_reachable(),
                                                source.silent_sentinels())  # fmt: skip
        store_detail = (
            "reachable" if store_ok else "unreachable; Sentinel followed over the last map"
        )
        total = source.sentinel_count
        answering = total - len(silent)
        detail = f"{answering} of {total} answer" + (
            f"; not answering: {', '.join(silent)}" if silent else ""
        )
        return [check("control_store", store_ok, store_detail),
                check("sentinels", answering >= majority(total), detail)]  # fmt: skip

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format"}})  # fmt: skip
    async def prometheus_metrics(request: Request) -> Response:
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
                metrics.shard_quarantined.labels(shard_id).set(stat.quarantined)
        return metrics_response(metrics.scraped(), request.headers.get("accept"))

    return app
