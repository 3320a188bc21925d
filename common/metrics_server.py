"""Serving a Prometheus registry on its own port (`/metrics`), for processes that have no HTTP
API of their own: the chaos scheduler (`chaos run --metrics-port`) and the sensors
(`detection sensor --metrics-port`).

Not for: the services with an HTTP API (ratequeue, lazarus), which serve /metrics themselves.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServer:
    """`registry` on http://HOST:PORT/metrics while served (a thread of prometheus_client)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start serving; returns the port (the one chosen when `port` is 0). Raises OSError
        when the address cannot be bound."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
