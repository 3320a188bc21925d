"""The audit trail: for every event, what the controller decided and why (rule matched, each
node's check results, the quorum outcome, the gates that stopped an action, notifications, and
the workflow with every step), kept in the record log and served by REST and CLI.

Not for: making decisions; records are written by the controller as it goes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from detection.events import Event
from lazarus_lite.checks import CheckResult
from lazarus_lite.coordination.interface import RecordLog
from notifications.delivery import Delivery

Outcome = Literal[
    "received",  # being decided
    "ignored",  # not an incident (heartbeats)
    "duplicate",  # same incident as an earlier event
    "stale",  # too old to act on
    "escalated",  # handed to a person, no action
    "no_action",  # a gate stopped the action (kill switch, rate limit, breaker, shadow)
    "recorded",  # the rule's action is to record it
    "scheduled",  # the workflow runs
    "remediated",  # the workflow succeeded
]


class NodeVerdict(BaseModel):
    node: str
    passed: bool
    results: list[CheckResult] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    answered_after: float | None = Field(
        None,
        description="seconds from the start of the quorum round to this verdict's arrival "
        "at the coordinator (the node's own `seconds` plus the round trip)",
    )


class QuorumOutcome(BaseModel):
    required: int
    passed: list[str]
    failed: list[str]
    unanswered: list[str]
    not_awaited: list[str] = Field(
        default_factory=list,
        description="nodes still evaluating when `required` others had passed: the decision "
        "was made without their verdict, which could not have changed it",
    )
    not_counted: list[str] = Field(
        default_factory=list,
        description="answers that were not a vote (`NODE via URL: why`): this node's own id "
        "answering through a peer, or a node already counted answering under another URL; "
        "`passed` and `failed` count each node id once",
    )

    @property
    def reached(self) -> bool:
        return len(self.passed) >= self.required

    def tally(self) -> str:
        """Who was counted and the answers that were not votes, for a person reading why."""
        counted = f"counted: {', '.join(self.passed) or 'none'} passed"
        if self.failed:
            counted += f", {', '.join(self.failed)} failed"
        if self.not_counted:
            counted += f"; not counted: {'; '.join(self.not_counted)}"
        return counted


class Note(BaseModel):
    at: float
    kind: str
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)


class AuditRecord(BaseModel):
    event_id: str
    event: dict[str, Any]
    service: str
    received_at: float
    coordinator: str
    outcome: Outcome = "received"
    reason: str = ""
    rule: str | None = None
    verdicts: list[NodeVerdict] = Field(default_factory=list)
    quorum: QuorumOutcome | None = None
    workflow_id: str | None = None
    gate: str | None = Field(None, description="the safety gate that stopped the action")
    would_run: str | None = Field(None, description="shadow mode: the action not taken")
    decided_at: float | None = None
    workflow_ended_at: float | None = Field(
        None, description="Unix time the decision's workflow ended (succeeded or escalated)"
    )
    stages: dict[str, float] = Field(
        default_factory=dict,
        description="Unix time each stage of the decision ended, in order: claimed, gates, "
        "quorum, workflow_started (where a failover's decision spends its time)",
    )
    notes: list[Note] = Field(default_factory=list)

    def is_of(self, event: Event) -> bool:
        """Whether this record is of `event` itself (a retry or a redelivery of it), not of
        another event sent with the same id; times are compared as instants."""
        try:
            return _same(Event.model_validate(self.event).model_dump(), event.model_dump())
        except ValidationError:  # a record of an event the schema no longer takes
            return _same(self.event, event.model_dump(mode="json"))

    def stage_ended(self, stage: str) -> None:
        self.stages[stage] = time.time()

    def note(self, kind: str, detail: str, **data: Any) -> None:
        self.notes.append(Note(at=time.time(), kind=kind, detail=detail, data=data))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: Python's `==` takes `true` for `1` and `false` for `0`, which would
    let a different event pass for a redelivery of the first."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class AuditLog:
    def __init__(self, records: RecordLog) -> None:
        self._records = records

    async def save(self, record: AuditRecord) -> None:
        await self._records.save_audit(
            record.event_id, record.model_dump_json(), record.received_at
        )

    async def get(self, event_id: str) -> AuditRecord | None:
        raw = await self._records.audit(event_id)
        return None if raw is None else AuditRecord.model_validate_json(raw)

    async def exists(self, event_id: str) -> bool:
        return await self._records.audit(event_id) is not None

    async def list(
        self, *, service: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Newest first."""
        raws = await self._records.newest_audits(since, max(limit * 5, limit) if service else limit)
        records = [AuditRecord.model_validate_json(r) for r in raws]
        if service is not None:
            records = [r for r in records if r.service == service]
        return records[:limit]


def note_deliveries(record: AuditRecord, deliveries: list[Delivery]) -> None:
    """Put notification deliveries in an audit record's notes (kind `notification`)."""
    for delivery in deliveries:
        record.note("notification", delivery.describe(), **delivery.model_dump(mode="json"))
