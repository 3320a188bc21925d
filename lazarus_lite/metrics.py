"""Prometheus metrics of one controller node, served on the node's own HTTP API as GET /metrics:
decisions by outcome (one per event), the ends of the workflows they scheduled, actions a
safety gate stopped (by gate), workflow step durations, the latency of the PINGs its checks
send, the escalations it published, the times its event stream's consumer group was found gone
and created again (the control store restarted empty), and the shard keeper's changes, made or
withheld by a gate.

A registry per node, so several nodes can live in one process (as in tests). Not for: making
or recording decisions (`decisions`), the sensors' metrics (`detection.metrics`) or the API's
(`ratequeue.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from detection.probe_latency import ProbeLatency
from detection.probes import ProbeResult
from lazarus_lite.audit import Outcome

# "received" is no decision (the event is being decided); "remediated" is only a workflow's end.
DECISION_OUTCOMES = tuple(o for o in get_args(Outcome) if o not in ("received", "remediated"))
WORKFLOW_OUTCOMES = ("remediated", "escalated")
STEP_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "lazarus_decisions", "Events this node decided, by outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in DECISION_OUTCOMES:  # every outcome shows from the start, at 0
            self.decisions.labels(outcome)
        # A scheduled workflow's end is a second outcome of the same event: counted apart, so
        # the decisions add up to the events decided.
        self.workflow_outcomes = Counter(
            "lazarus_workflow_outcomes",
            "Ends of the workflows this node's decisions scheduled, by the event's final outcome",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in WORKFLOW_OUTCOMES:
            self.workflow_outcomes.labels(outcome)
        self.gate_refusals = Counter(
            "lazarus_gate_refusals", "Actions a safety gate stopped, by gate",
            ["gate"], registry=self.registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "lazarus_workflow_step_seconds",
            "Duration of each workflow step attempt, by workflow, step and result",
            ["workflow", "step", "result"], registry=self.registry,
            buckets=STEP_SECONDS_BUCKETS,
        )  # fmt: skip
        self.probe_seconds = ProbeLatency(
            "lazarus_probe_seconds",
            "Latency of the PINGs this node's checks send to Redis nodes, by result",
            self.registry,
        )
        self.escalations_published = Counter(
            "lazarus_escalations_published",
            "Escalations this node put on the escalations stream",
            registry=self.registry,
        )
        self.reports_held_back = Counter(
            "lazarus_reports_held_back",
            "reports held back because the decision of their incident's claim was not made "
            "within the wait (each is then published again; a failed publish is logged)",
            registry=self.registry,
        )
        # The keeper acts on no event, so it has no audit record: these and its log lines are
        # what it leaves behind.
        self.keeper_changes = Counter(
            "lazarus_shard_keeper_changes",
            "Changes the shard keeper made on Redis or in the topology, by action",
            ["action"], registry=self.registry,
        )  # fmt: skip
        self.keeper_withheld = Counter(
            "lazarus_shard_keeper_withheld",
            "Changes the shard keeper would have made but a gate (kill switch, shadow mode, "
            "control realm) stopped, counted once while they stay withheld, by action and gate",
            ["action", "gate"], registry=self.registry,
        )  # fmt: skip

    def count_groups_recreated(self, stream: Any) -> None:
        """Show how often `stream` found its consumer group gone and made it again (the
        stream counts it; a backend without groups, Kinesis, shows 0)."""
        self.registry.register(_GroupsRecreated(stream))

    def decided(self, outcome: str) -> None:
        self.decisions.labels(outcome).inc()

    def workflow_ended(self, outcome: str) -> None:
        self.workflow_outcomes.labels(outcome).inc()

    def gate_stopped(self, gate: str) -> None:
        self.gate_refusals.labels(gate).inc()

    def step_ended(self, workflow: str, step: str, result: str, seconds: float) -> None:
        self.step_seconds.labels(workflow, step, result).observe(max(0.0, seconds))

    def probed(self, probe: ProbeResult) -> None:
        self.probe_seconds.observe(probe)


class _GroupsRecreated(Collector):
    """The stream's own count, read at each scrape: the stream makes the group again inside
    `receive`, where no metrics object is at hand."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "lazarus_stream_groups_recreated",
            "Times this node found the event stream's consumer group gone (NOGROUP: the control "
            "store restarted empty) and created it again",
            value=getattr(self._stream, "groups_recreated", 0),
        )
