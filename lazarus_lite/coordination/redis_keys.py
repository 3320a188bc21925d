"""The Redis backend's key names: where the coordination store keeps each piece of state in a
Redis control store (unchanged since the keys were first written, so running deployments keep
their state). Private to `redis_backend`: nothing else builds an `lz:` key.

Not for: the event streams' keys (`detection.streams`, `detection.kinesis`) or the topology's
(`ratequeue.topology`).
"""

from __future__ import annotations

# -- the controller's decisions ---------------------------------------------------------------
ESCALATIONS_STREAM = "lz:escalations"  # one entry an escalation, for people and dashboards
AUDIT_INDEX = "lz:audit:index"  # sorted set: event id -> received_at
SHADOW_DECISIONS = "lz:shadow:decisions"  # list: what shadow mode would have run


def audit_record(event_id: str) -> str:
    return f"lz:audit:{event_id}"


def escalation_appended(event_id: str) -> str:
    """Set once the event's entry is in the escalations stream (it is added once)."""
    return f"lz:escalations:appended:{event_id}"


def incident_claim(event_type: str, dedup_key: str) -> str:
    """The coordinator's claim on an incident (its value is the id of the event that took it)."""
    return f"lz:incident:{event_type}:{dedup_key}"


def recovered_flag(claim_key: str) -> str:
    """Set while a failure is being decided and its recovery has already arrived."""
    return f"{claim_key}:recovered"


# -- the safety gates -------------------------------------------------------------------------
KILLSWITCH = "lz:killswitch"  # hash: workflow category (or all) -> who engaged it
SHADOW_SERVICES = "lz:shadow"  # set: services in shadow mode (or all)


def rate_window(service: str) -> str:
    return f"lz:rate:{service}"


def breaker_window(region: str) -> str:
    return f"lz:breaker:{region}"


BREAKER_PATTERN = breaker_window("*")


# -- locks ------------------------------------------------------------------------------------
LOCK_TOKENS = "lz:lock:tokens"  # the fencing-token counter


def lock(kind: str, resource: str) -> str:
    return f"lz:lock:{kind}:{resource}"


# -- the shard watch --------------------------------------------------------------------------
SENSORS = "lz:sensors"  # hash: sensor -> its last heartbeat event


def watch_reported(incident: str) -> str:
    """Set when a controller filed the watch's report about an incident (with a TTL)."""
    return f"lz:watch:reported:{incident}"


def watch_flagged(shard: str) -> str:
    """The node that marked the shard unwritable (with a TTL)."""
    return f"lz:watch:flagged:{shard}"


# -- workflows --------------------------------------------------------------------------------
ACTIVE_WORKFLOWS = "lz:wf:active"  # set: ids of the workflows not finished


def workflow_record(workflow_id: str) -> str:
    return f"lz:wf:{workflow_id}"


def workflow_history(workflow_id: str) -> str:
    return f"lz:wf:{workflow_id}:history"


def workflow_owner(workflow_id: str) -> str:
    """The node that runs the workflow now (a short lease it renews)."""
    return f"lz:wf:{workflow_id}:owner"


def workflow_of_event(event_id: str) -> str:
    """The one workflow an event started (an event handled again adopts it)."""
    return f"lz:event:{event_id}:workflow"


def approval(workflow_id: str, step_name: str) -> str:
    return f"lz:approval:{workflow_id}:{step_name}"


# -- the chaos runner -------------------------------------------------------------------------
RUN_LOCK = "chaos:run-lock"  # the holder of the one experiment run at a time


def chaos_schedule(name: str) -> str:
    """A scheduled run's grid and next run time (`chaos.schedule_grid`)."""
    return f"chaos:schedule:{name}"


# -- the stateless services' registry ---------------------------------------------------------
def service_members(service: str) -> str:
    """Hash: the hosts (base URLs) behind the service's load balancer."""
    return f"lz:lb:{service}"


def service_forensics(service: str) -> str:
    """Hash: hosts taken out for forensics -> when and why."""
    return f"lz:lb:{service}:forensics"
