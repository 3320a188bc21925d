"""What the controllers, sensors' registry, API and chaos runner need from the coordination
store, said as what it means (claim an incident for a while, take a lock and get its fencing
token, save a workflow record only while owning it, count events in a sliding window), never as
the commands of one store. Each method can be built on Redis (one key or one script) and on
etcd v3 (leases for the TTLs, a transaction comparing a key's value or revision for every
"only if", range reads by prefix for the listings, watches for the topology).

Not for: the topology's own protocol (`ratequeue.topology.TopologySource`, so the queue does not
depend on the controller), building a store (`lazarus_lite.coordination.opening`) or any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from detection.events import Event
from lazarus_lite.errors import WorkflowStartPending
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue.topology import Topology, TopologySource
from ratequeue.write_failures import FailureRun

# How long a workflow's owner lease lasts unless renewed (the engine renews it three times as
# often; a node silent this long loses its workflows to a node that resumes them).
OWNER_LEASE_MS = 3000

# The two sliding windows the safety gates count in: a service's incidents (its rate limit)
# and a region's failing services (its circuit breaker).
WindowKind = Literal["service_incidents", "failing_services"]


@dataclass(frozen=True)
class HeldLock:
    """A lock held by `holder` under fencing token `token`. `key` is the backend's name for the
    lock, opaque to callers (it is kept in workflow records, so a resumed workflow checks the
    same lock)."""

    key: str
    holder: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.holder}|{self.token}"


class ResourceLocks(Protocol):
    """Locks on resources (`host`, `service`, `shard`) with a TTL and a fencing token that
    strictly increases across every lock the store ever grants."""

    ttl_ms: int

    async def acquire(self, kind: str, resource: str, holder: str) -> HeldLock:
        """Take the lock if free, or renew it if `holder` has it (same token); else LockBusy."""
        ...

    async def renew(self, lock: HeldLock) -> bool:
        """Extend the TTL only if `lock` is still held with its token."""
        ...

    async def assert_held(self, lock: HeldLock) -> None:
        """Renew, or raise LockLost when the lock is gone or held under another token."""
        ...

    async def release(self, lock: HeldLock) -> bool:
        """Give the lock back only if it is still held with its token."""
        ...

    async def holder(self, kind: str, resource: str) -> str | None:
        """`holder|token` of the lock, or None when free."""
        ...


class WorkflowRecords(Protocol):
    """Workflow records with their history, the set of unfinished ones, each one's owner lease
    (the node running it), and the one workflow each event started."""

    async def save(
        self,
        record: WorkflowRecord,
        *entries: dict[str, Any],
        owner: str | None,
        new: bool = False,
        while_bound: bool = False,
    ) -> None:
        """Write the record and append `entries` (none, one or several, in order) to its
        history in one step; with `owner`, only while that node holds the owner lease (else
        OwnershipLost). An entry's own `at` is kept; one without gets the time of the save.
        `new`: the record's first save under an id just made, a hint that lets a store skip
        reading what is there. A wrong hint never loses a save; it costs what a failed guess
        costs (on etcd a failed transaction, then the owner read and the record read before
        the transaction again), not only the read it meant to skip.
        `while_bound`: also only while the binding of the record's event (`record.event_id`,
        required then) names the record, else WorkflowStartPending, saving nothing: the first
        save of a workflow its event started, so a binding replaced before it
        (`rebind_event`) leaves the event one workflow, not two."""
        ...

    async def load(self, workflow_id: str) -> WorkflowRecord | None: ...

    async def history(self, workflow_id: str) -> list[dict[str, Any]]: ...

    async def active(self) -> list[str]:
        """Ids of the workflows not finished, sorted."""
        ...

    async def claim(self, workflow_id: str, node_id: str) -> bool:
        """Take the owner lease if nobody holds it."""
        ...

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        """Extend the owner lease only if `node_id` holds it."""
        ...

    async def disown(self, workflow_id: str, node_id: str) -> None:
        """Drop the owner lease if `node_id` holds it."""
        ...

    async def owner(self, workflow_id: str) -> str | None:
        """The node holding the owner lease now, or None."""
        ...

    async def bind_event(self, event_id: str, workflow_id: str) -> str | None:
        """Record that `event_id` started `workflow_id`, unless it started one already: then
        that workflow's id (and nothing changes)."""
        ...

    async def rebind_event(self, event_id: str, workflow_id: str, *, replacing: str) -> bool:
        """Point `event_id` at `workflow_id` only while its binding names `replacing` and no
        record of `replacing` exists (its start bound the event and stopped before its first
        save); whether it did, in one step: of two nodes replacing one binding, one wins, and
        of this and a first save of `replacing` made `while_bound`, the one that comes first
        wins (the other is refused)."""
        ...

    async def unbind_event(self, event_id: str, workflow_id: str) -> None:
        """Drop `event_id`'s binding if it still names `workflow_id` (a workflow refused before
        anything was recorded under its id); a binding to another workflow stays."""
        ...


def bound_event(record: WorkflowRecord) -> str:
    """The event whose binding a save `while_bound` checks: the record's own."""
    if record.event_id is None:
        raise ValueError(f"while_bound: workflow {record.id} has no event_id to be bound to")
    return record.event_id


def rebound(record: WorkflowRecord) -> WorkflowStartPending:
    """What a save `while_bound` raises when the event's binding names another workflow."""
    return WorkflowStartPending(
        f"event {record.event_id}: its binding names another workflow than {record.id}, "
        "which was started for it side by side; not saved"
    )


class IncidentClaimStore(Protocol):
    """Claims on incidents (an event type and a dedup key), held for a time by the id of the
    event that decides the incident; plus the "recovered while being decided" mark."""

    async def claim(self, event_type: str, dedup_key: str, event_id: str, ttl: float) -> bool:
        """Claim the incident for `event_id` if nobody holds it."""
        ...

    async def holder(self, event_type: str, dedup_key: str) -> str | None:
        """The id of the event holding the claim, or None."""
        ...

    async def take_over(
        self, event_type: str, dedup_key: str, held_by: str, event_id: str, ttl: float
    ) -> bool:
        """Give the claim to `event_id` if `held_by` still holds it (False otherwise: no claim
        any more, or another event took it first; of two events taking one claim, one wins)."""
        ...

    async def release(self, event_type: str, dedup_key: str, held_by: str) -> bool:
        """Drop the claim if `held_by` still holds it (False otherwise: a claim another event
        took over is that event's, and dropping it would let a third decide too)."""
        ...

    async def held_for(self, event_type: str, dedup_key: str) -> float | None:
        """Seconds the claim has left, or None when nobody holds it."""
        ...

    async def mark_recovered(self, event_type: str, dedup_key: str, ttl: float) -> None:
        """Note that the incident's failure recovered while it is being decided."""
        ...

    async def take_recovered(self, event_type: str, dedup_key: str) -> bool:
        """Remove the recovered mark; whether it was there."""
        ...


class SlidingWindows(Protocol):
    """Named sliding windows of distinct members by time (one entry per member, the latest time
    wins; entries older than the window are forgotten)."""

    async def record(self, kind: WindowKind, name: str, member: str, window: float) -> int:
        """Note `member` now; returns how many members the window holds."""
        ...

    async def members(self, kind: WindowKind, name: str, window: float) -> list[str]:
        """The members noted within the last `window` seconds, sorted."""
        ...

    async def names(self, kind: WindowKind) -> list[str]:
        """The names of the windows of `kind` that hold anything, sorted."""
        ...


class SafetyFlags(Protocol):
    """The kill switch (per workflow category, or `*`) and shadow mode (per service, or `*`)."""

    async def engage_kill_switch(self, category: str, info: dict[str, Any]) -> None: ...

    async def release_kill_switch(self, category: str) -> None: ...

    async def release_every_kill_switch(self) -> None: ...

    async def kill_switches(self) -> dict[str, dict[str, Any]]:
        """Every engaged category with who engaged it, when and why."""
        ...

    async def set_shadow(self, service: str, shadowed: bool) -> None: ...

    async def clear_shadow(self) -> None: ...

    async def shadowed(self) -> list[str]:
        """The services in shadow mode (`*`: all), sorted."""
        ...


# A heartbeat older than this is forgotten when the heartbeats are read: its sensor is gone (a
# replaced replica's: each replacement's sensor has a new name), and keeping it would grow the
# registry by one heartbeat every failover. A listed replica's silent sensor is reported minutes in.
SENSOR_HEARTBEAT_RETENTION = 24 * 3600.0


class SensorRegistry(Protocol):
    """Each sensor's last heartbeat (for `SENSOR_HEARTBEAT_RETENTION`)."""

    async def record_heartbeat(self, event: Event) -> None: ...

    async def heartbeat(self, sensor: str) -> Event | None: ...

    async def heartbeats(self) -> list[Event]:
        """Every sensor's last heartbeat (unreadable ones skipped); heartbeats older than
        `SENSOR_HEARTBEAT_RETENTION` are removed instead."""
        ...


class WatchMarks(Protocol):
    """The shard watch's marks shared by every controller node: which node filed a report (so
    a report is filed once per episode) and which node flagged a shard unwritable."""

    async def file_report(self, report: str, node_id: str, ttl: float) -> bool:
        """Mark `report` as filed by `node_id` if no node filed it yet."""
        ...

    async def report_filer(self, report: str) -> str | None: ...

    async def withdraw_report(self, report: str) -> None: ...

    async def flag_unwritable(self, shard: str, node_id: str, ttl: float) -> None:
        """`node_id` holds the shard's unwritable flag for `ttl` seconds (renewed each pass)."""
        ...

    async def unwritable_flagger(self, shard: str) -> str | None: ...

    async def end_unwritable_episode(self, shard: str, report: str) -> None:
        """Drop the shard's flag and its report's mark: a later episode is reported anew."""
        ...


class ServiceMembership(Protocol):
    """The hosts (base URLs) behind each stateless service's balancer, and those taken out for
    forensics."""

    async def members(self, service: str) -> dict[str, dict[str, Any]]: ...

    async def add(self, service: str, url: str, **info: Any) -> None: ...

    async def remove(self, service: str, url: str) -> bool: ...

    async def hold_for_forensics(self, service: str, url: str, reason: str) -> None: ...

    async def forensics(self, service: str) -> dict[str, dict[str, Any]]: ...


class Approvals(Protocol):
    """Operators' approvals of workflow gate steps."""

    async def approve(self, workflow_id: str, step_name: str) -> None: ...

    async def is_approved(self, workflow_id: str, step_name: str) -> bool: ...


class RunLock(Protocol):
    """The chaos runner's lock on a deployment: one experiment run at a time."""

    async def take(self, holder: str, ttl: float) -> str | None:
        """Take the lock for `ttl` seconds if free: None; else who holds it."""
        ...

    async def renew(self, holder: str, ttl: float) -> bool:
        """Extend the lock only if `holder` has it."""
        ...

    async def release(self, holder: str) -> None:
        """Give the lock back if `holder` has it."""
        ...


class ChaosSchedules(Protocol):
    """Where a scheduled chaos run keeps its grid and next run time (`chaos.schedule_grid`), so
    a scheduler restarted anywhere, without the disk it ran on, keeps its times."""

    async def kept(self, name: str) -> str | None:
        """The schedule `name` as last kept (its JSON), or None."""
        ...

    async def keep(self, name: str, state_json: str) -> None:
        """Keep the schedule `name` (its JSON), replacing what was kept."""
        ...


class RecordLog(Protocol):
    """Records kept for people and reports, not for deciding: the audit trail, the escalations
    stream, what shadow mode would have run, and the API's write failures."""

    async def save_audit(self, event_id: str, record_json: str, received_at: float) -> None: ...

    async def audit(self, event_id: str) -> str | None: ...

    async def newest_audits(self, since: float | None, count: int) -> list[str]:
        """Up to `count` audit records received since `since`, newest first, as JSON."""
        ...

    async def append_escalation(self, event_id: str, reason: str, node_id: str) -> None:
        """One entry per `event_id`: a retry (its first reply lost) adds none."""
        ...

    async def append_shadow_decision(self, decision: dict[str, Any]) -> None: ...

    async def shadow_decisions(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` shadow decisions, oldest first."""
        ...

    async def write_failures(self) -> dict[str, list[FailureRun]]:
        """The API nodes' runs of failed writes per shard (`ratequeue.write_failures`)."""
        ...


@dataclass(frozen=True)
class StepReads:
    """What a state-changing workflow step reads before it acts, read together (at one
    revision on etcd, in one MULTI on Redis): the kill switches engaged, and the topology."""

    kill_switches: dict[str, dict[str, Any]]
    topology: Topology | None


class CoordinationStore(Protocol):
    """Everything above, from one store; what the controller, its API and the chaos runner
    hold instead of a connection."""

    locks: ResourceLocks
    workflows: WorkflowRecords
    incidents: IncidentClaimStore
    windows: SlidingWindows
    flags: SafetyFlags
    sensors: SensorRegistry
    watch: WatchMarks
    services: ServiceMembership
    approvals: Approvals
    run_lock: RunLock
    schedules: ChaosSchedules
    records: RecordLog
    topology: TopologySource
    # What this backend raises when the store cannot answer (the API answers it with a 503,
    # `/healthz` reports the store unhealthy); anything else is a bug or bad data.
    unavailable: tuple[type[Exception], ...]

    async def ping(self) -> bool:
        """Whether the store answers now."""
        ...

    async def step_reads(self) -> StepReads:
        """The kill switches and the topology in one round trip to the store."""
        ...

    async def aclose(self) -> None: ...
