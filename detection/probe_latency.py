"""The latency histogram of PINGs by result (ok, failed), which sensors and controllers both
export, each under its own metric name: one set of buckets, one way to observe a probe.

Not for: probing (`detection.probes`) or any other metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from detection.probes import ProbeResult

# From a loopback round trip (sub-millisecond) to the one-second probe timeout.
PROBE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class ProbeLatency:
    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            name, documentation, ["result"], registry=registry, buckets=PROBE_SECONDS_BUCKETS
        )

    def observe(self, probe: ProbeResult) -> None:
        """A probe's round trip when it was answered, the time it spent when not."""
        self.histogram.labels("ok" if probe.ok else "failed").observe(probe.latency_s)
