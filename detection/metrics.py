"""Prometheus metrics of one heartbeat sensor (`detection sensor --metrics-port N`): the latency
of its PINGs of the primary, and the events it published or failed to publish, by type.

A registry per sensor, so several sensors can live in one process (as in tests). Not for: the
controllers' metrics (`lazarus_lite.metrics`) or deciding anything.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from common.metrics_server import MetricsServer
from detection.probes import ProbeResult

PROBE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
SENSOR_EVENT_TYPES = ("RedisMasterDown", "RedisMasterRecovered", "SensorHeartbeat")


class SensorMetrics(MetricsServer):
    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self.probe_seconds = Histogram(
            "sensor_probe_seconds",
            "PINGs of the watched primary: round trip when answered, time spent when not",
            ["result"], registry=self.registry, buckets=PROBE_SECONDS_BUCKETS,
        )  # fmt: skip
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
        self.probe_seconds.labels("ok" if probe.ok else "failed").observe(probe.latency_s)

    def publish_ended(self, event_type: str, ok: bool) -> None:
        (self.published if ok else self.publish_failures).labels(event_type).inc()
