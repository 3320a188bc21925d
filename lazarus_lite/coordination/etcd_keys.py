"""The etcd backend's key layout: every key of the coordination store under `/lazarus/`, one key
per piece of state (what Redis keeps in a hash or set is a prefix of keys here, so a listing is
one range read and a change is one key). Names that come from outside (services, URLs, ids) are
percent-encoded, so a `/` in them cannot reach into another prefix. Private to `etcd_backend`.

Not for: the topology's key (`ratequeue.etcd_topology`), the Redis backend's keys
(`redis_keys`), or the record log (it stays in Redis).
"""

from __future__ import annotations

from urllib.parse import quote, unquote

ROOT = "/lazarus/"


def part(name: str) -> str:
    """`name` as one path segment."""
    return quote(name, safe="")


def name_of(segment: str) -> str:
    return unquote(segment)


# -- locks: the value is the holder; the fencing token is the key's create_revision -----------
def lock(kind: str, resource: str) -> str:
    return f"{ROOT}lock/{part(kind)}/{part(resource)}"


# -- workflows --------------------------------------------------------------------------------
def workflow_record(workflow_id: str) -> str:
    return f"{ROOT}wf/{part(workflow_id)}/record"


def workflow_history(workflow_id: str) -> str:
    """Prefix of the history: one key an entry, numbered by the record's version it came with."""
    return f"{ROOT}wf/{part(workflow_id)}/history/"


def workflow_owner(workflow_id: str) -> str:
    return f"{ROOT}wf/{part(workflow_id)}/owner"


ACTIVE_WORKFLOWS = f"{ROOT}wf-active/"  # one key per unfinished workflow


def active_workflow(workflow_id: str) -> str:
    return f"{ACTIVE_WORKFLOWS}{part(workflow_id)}"


def workflow_of_event(event_id: str) -> str:
    return f"{ROOT}event/{part(event_id)}/workflow"


def approval(workflow_id: str, step_name: str) -> str:
    return f"{ROOT}approval/{part(workflow_id)}/{part(step_name)}"


# -- incidents and the safety gates -----------------------------------------------------------
def incident_claim(event_type: str, dedup_key: str) -> str:
    return f"{ROOT}incident/{part(event_type)}/{part(dedup_key)}/claim"


def recovered_mark(event_type: str, dedup_key: str) -> str:
    return f"{ROOT}incident/{part(event_type)}/{part(dedup_key)}/recovered"


def windows(kind: str) -> str:
    """Prefix of every window of `kind`."""
    return f"{ROOT}window/{part(kind)}/"


def window(kind: str, name: str) -> str:
    """Prefix of one window: one key per member, its value the time it was last noted."""
    return f"{windows(kind)}{part(name)}/"


KILLSWITCH = f"{ROOT}killswitch/"  # one key per engaged category
SHADOW_SERVICES = f"{ROOT}shadow/"  # one key per service in shadow mode


# -- the shard watch and the sensors ----------------------------------------------------------
SENSORS = f"{ROOT}sensor/"  # one key per sensor: its last heartbeat


def watch_reported(report: str) -> str:
    return f"{ROOT}watch/reported/{part(report)}"


def watch_flagged(shard: str) -> str:
    return f"{ROOT}watch/flagged/{part(shard)}"


# -- the stateless services' balancers --------------------------------------------------------
def service_members(service: str) -> str:
    return f"{ROOT}lb/{part(service)}/members/"


def service_forensics(service: str) -> str:
    return f"{ROOT}lb/{part(service)}/forensics/"


# -- the chaos runner -------------------------------------------------------------------------
RUN_LOCK = f"{ROOT}chaos/run-lock"


def chaos_schedule(name: str) -> str:
    """A scheduled run's grid and next run time (`chaos.schedule_grid`)."""
    return f"{ROOT}chaos/schedules/{part(name)}"
