"""Prometheus metrics of one ratequeue service instance (a registry per app, so several apps can
live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
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
        self.shard_messages = Gauge(
            "ratequeue_shard_messages", "Messages queued or leased per shard", ["shard"],
            registry=self.registry,
        )  # fmt: skip
        self.shard_leased = Gauge(
            "ratequeue_shard_leased", "Messages leased per shard", ["shard"], registry=self.registry
        )
        self.shard_up = Gauge(
            "ratequeue_shard_up",
            "1 if the shard primary answers",
            ["shard"],
            registry=self.registry,
        )
        self.topology_epoch = Gauge(
            "ratequeue_topology_epoch", "Epoch of the topology in use", registry=self.registry
        )
