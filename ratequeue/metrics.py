"""Prometheus metrics of one ratequeue service instance: a registry per app, so several apps can
live in one process (as in tests); with API worker processes (`ratequeue.workers`) each worker
writes its values to a shared directory (prometheus-client's multiprocess mode) and a scrape,
whichever worker serves it, adds up every worker's counters.

Not for: what the metrics measure (the service sets them).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector


class ServiceMetrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        """`multiprocess_dir`: where every worker's values are (the process must have been
        started with PROMETHEUS_MULTIPROC_DIR naming it); None for a single process."""
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.enqueued = Counter(
            "ratequeue_enqueue", "Enqueue requests by outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.dequeued = Counter(
            "ratequeue_dequeued_messages", "Messages leased to consumers", registry=self.registry
        )
        self.acked = Counter(
            "ratequeue_acked_messages", "Leases acknowledged", registry=self.registry
        )
        self.wait_failures = Counter(
            "ratequeue_wait_failures", "Writes WAIT did not confirm in time", registry=self.registry
        )
        self.latency = Histogram(
            "ratequeue_request_seconds", "Request latency by operation", ["operation"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        # The gauges are set by whichever worker serves a scrape, just before it answers: across
        # workers the latest value is the one that counts.
        self.shard_messages = Gauge(
            "ratequeue_shard_messages", "Messages queued or leased per shard", ["shard"],
            registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.shard_leased = Gauge(
            "ratequeue_shard_leased", "Messages leased per shard", ["shard"],
            registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.shard_quarantined = Gauge(
            "ratequeue_shard_quarantined",
            "Layout-1 records the upgrade set aside in rq:v2:quarantine per shard", ["shard"],
            registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.shard_up = Gauge(
            "ratequeue_shard_up", "1 if the shard primary answers", ["shard"],
            registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.topology_epoch = Gauge(
            "ratequeue_topology_epoch", "Epoch of the topology in use",
            registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip

    def scraped(self) -> CollectorRegistry:
        """What a scrape of this instance reads: its registry, or with workers every worker's."""
        if self.multiprocess_dir is None:
            return self.registry
        # A fresh registry per scrape, as prometheus-client's multiprocess mode prescribes.
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=str(self.multiprocess_dir))
        return combined
