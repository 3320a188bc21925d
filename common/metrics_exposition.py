"""A service's `GET /metrics` answer: its registry in the exposition format the scraper's
`Accept` header asks for, as Prometheus' content negotiation has it and prometheus-client's own
handler answers (`choose_encoder`): OpenMetrics to a Prometheus that asks for it, the text
format 0.0.4 to anything else (curl, an older scraper).

Not for: defining metrics (each package's `metrics` module), or serving a registry on a port
of its own (`common.metrics_server`, which prometheus-client negotiates by itself).
"""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


def metrics_response(registry: CollectorRegistry, accept: str | None) -> Response:
    encode, content_type = choose_encoder(accept or "")
    return Response(encode(registry), media_type=content_type)
