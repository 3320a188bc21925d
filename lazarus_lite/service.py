"""The controller node's HTTP API, assembled: `create_app` builds the node, puts its parts on
the app for the routes (`routes.context.NodeApi`), installs the error contract and mounts the
routers of `lazarus_lite.routes` (event intake and the audit trail, workflows, the peer endpoint
of the quorum, the safety gates, health).

Errors are JSON `{"error": {"code", "message"}}`; bad input is a 4xx naming the field and
changes nothing, and no answer is a traceback (`common.http_contract` installs the handlers
and the body limits). The published OpenAPI declares each request body, the bearer token of the
mutating endpoints, and every status an operation answers. Not for: the endpoints themselves
(`routes`) or decisions (see `controller`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from common.http_contract import PROJECT_ERRORS, install_error_handlers, publish_contract
from detection.stream_factory import open_event_stream
from detection.streams import EventStream
from lazarus_lite.controller import ControllerNode
from lazarus_lite.coordination.opening import open_coordination_store
from lazarus_lite.routes import events, gates, health, metrics, quorum, workflows
from lazarus_lite.routes.context import NodeApi
from lazarus_lite.settings import ControllerSettings

log = logging.getLogger(__name__)


def open_stream(settings: ControllerSettings) -> EventStream:
    return open_event_stream(
        settings.stream,
        settings.control_url,
        kinesis_stream=settings.kinesis_stream,
        kinesis_region=settings.kinesis_region,
        kinesis_endpoint=settings.kinesis_endpoint,
        reclaim_ms=int(settings.event_reclaim_seconds * 1000),
        max_event_ahead=settings.max_event_ahead,
    )


async def on_store_unavailable(request: Request, error: Exception) -> JSONResponse:
    return PROJECT_ERRORS.response(503, "control_store_unavailable", str(error),
                                   headers={"Retry-After": "1"})  # fmt: skip


def create_app(settings: ControllerSettings) -> FastAPI:
    store = open_coordination_store(settings)
    node = ControllerNode(settings, store=store, stream=open_stream(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        yield
        await node.stop()
        await store.aclose()

    app = FastAPI(title=f"lazarus {settings.node_id}", version="1", lifespan=lifespan)
    app.state.api = NodeApi(settings, node, store)
    publish_contract(app)
    install_error_handlers(app)
    # The coordination store's backend errors, and Redis's for the event stream kept there.
    for unavailable in {RedisError, *store.unavailable}:
        app.add_exception_handler(unavailable, on_store_unavailable)
    # The routes themselves, not `include_router`: FastAPI mounts an included router as one
    # opaque entry, and the 405 answer names the allowed methods by looking at the app's
    # routes. Their order is the order of the published paths.
    for area in (events, workflows, quorum, gates, health, metrics):
        app.router.routes.extend(area.router.routes)
    return app
