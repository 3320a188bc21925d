"""Prometheus metrics of one heartbeat sensor (`detection sensor --metrics-port N`): the latency
of its PINGs of the primary, and the events it published or failed to publish, by type.

A registry per sensor, so several sensors can live in one process (as in tests). Not for: the
controllers' metrics (`lazarus_lite.metrics`) or deciding anything.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from common.metrics_server import MetricsServer
from detection.probe_latency import ProbeLatency
from detection.probes import ProbeResult

SENSOR_EVENT_TYPES = ("RedisMasterDown", "RedisMasterRecovered", "SensorHeartbeat")


class SensorMetrics(MetricsServer):
    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.probe_seconds = ProbeLatency(
            "sensor_probe_seconds",
            "PINGs of the watched primary: round trip when answered, time spent when not",
            self.registry,
        )
        self.published = Counter(
            "sensor_events_published", "Events put on the event stream, by type",
            ["type"], registry=self.registry,
        )  # fmt: skip
        self.publish_failures = Counter(
            "sensor_event_publish_failures", "Events the event stream did not take, by type",
            ["type"], registry=self.registry,
        )  # fmt: skip
        for event_type in SENSOR_EVENT_TYPES:  # every type shows from the start, at 0
            self.published.labels(event_type)
            self.publish_failures.labels(event_type)

    def probed(self, probe: ProbeResult) -> None:
        self.probe_seconds.observe(probe)

    def publish_ended(self, event_type: str, ok: bool) -> None:
        (self.published if ok else self.publish_failures).labels(event_type).inc()
