"""A service's `GET /metrics` answer: its registry in the exposition format the scraper's
`Accept` header asks for, as Prometheus' content negotiation has it and prometheus-client's own
handler answers (`choose_encoder`): OpenMetrics to a Prometheus that asks for it, the text
format 0.0.4 to a scraper that asks for no particular format (curl, an older Prometheus).

Not for: defining metrics (each package's `metrics` module), or serving a registry on a port
of its own (`common.metrics_server`, which prometheus-client negotiates by itself).
"""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder

# The text format every Prometheus reads, for a scraper that asks for nothing else.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def metrics_response(registry: CollectorRegistry, accept: str | None) -> Response:
    try:
        encode, content_type = choose_encoder(acceptable(accept or ""))
    except (TypeError, ValueError):  # a version it cannot compare ("1.0.0-rc1"): never a 500
        encode, content_type = generate_latest, TEXT_FORMAT
    return Response(encode(registry), media_type=content_type)


def acceptable(accept: str) -> str:
    """`accept` as `choose_encoder` reads it: without the media ranges given q=0 ("not
    acceptable", RFC 9110 12.4.2), which it would choose all the same, and with parameter values
    unquoted (`version="1.0.0"` is as valid as `version=1.0.0`)."""
    ranges = [part for part in accept.replace('"', "").split(",") if not _refused(part)]
    return ",".join(ranges)


def _refused(media_range: str) -> bool:
    for parameter in media_range.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False
