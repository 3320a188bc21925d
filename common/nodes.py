"""What a node of the testbed is, the one home of these names: the role it plays (`Role` for the
nodes the testbed starts itself, `RoleName` for the nodes a target file names), the
programs a node of each role runs (`PROGRAMS_OF_ROLE`: the testbed, the fault backends and the
agent check pids against it), which roles are Redis nodes, and the two loopback addresses a local
node answers on (`CLIENT_HOST` for clients, `PEER_HOST` for replication, sensors and controllers,
so an experiment can cut one path and keep the other).

Not for: where a given node is (the topology, the testbed's state, a target file), or starting
one (see `common.redis_processes`).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, StringConstraints

# The roles of the nodes the testbed starts: `instance` is a stateless service's host that the
# controller's actuator provisions.
Role = Literal[
    "control", "primary", "replica", "api", "sensor", "lazarus", "instance", "etcd", "sentinel"
]
# Names people reach for when they mean one of the testbed's roles.
_SYNONYMS = {"master": "primary", "slave": "replica", "controller": "lazarus"}


def _not_a_misspelt_role(name: str) -> str:
    """A role of one's own is fine; one that looks like a built-in role is a typo, refused at
    load rather than found out when a fault cannot tell which program to check."""
    folded = name.lower().replace("-", "_").replace(" ", "_")
    meant = _SYNONYMS.get(folded) or next((r for r in get_args(Role) if r == folded), None)
    if meant is not None and meant != name:
        raise ValueError(f"role {name!r} is not a role; did you mean {meant!r}?")
    return name


# A role as a target file or the fault agent's targets file names it: one of `Role`, or a role
# of the user's own (a load balancer, a worker), whose program a fault must then be told
# (`expect`), since `PROGRAMS_OF_ROLE` cannot know it.
RoleName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_not_a_misspelt_role),
]

# The Redis nodes: the control store and the shards' nodes. A shard node boots parked.
REDIS_ROLES: frozenset[Role] = frozenset({"control", "primary", "replica"})
SHARD_ROLES: frozenset[Role] = frozenset({"primary", "replica"})
# The nodes that serve HTTP (the ratequeue API and the controllers).
HTTP_ROLES: frozenset[Role] = frozenset({"api", "lazarus"})

# The program names a node of each role runs under. The first name is the one a command names
# the program by (Gremlin's `process_killer -p`). A Python program is its script or `-m`
# package: the testbed runs `python -m lazarus_lite`, the staging compose file the console
# script `lazarus`.
PROGRAMS_OF_ROLE: dict[Role, tuple[str, ...]] = {
    **dict.fromkeys(REDIS_ROLES, ("redis-server",)),
    "api": ("ratequeue",),
    "sensor": ("detection",),
    "lazarus": ("lazarus_lite", "lazarus"),
    "etcd": ("etcd",),
    "sentinel": ("redis-sentinel",),
}

CLIENT_HOST = "127.0.0.1"
PEER_HOST = "127.0.0.2"


def peer_host_of(role: RoleName) -> str | None:
    """Where replicas, sensors and controllers reach a local node of `role`: the peer address
    for a Redis node, None (its client address) for the others."""
    return PEER_HOST if role in REDIS_ROLES else None
