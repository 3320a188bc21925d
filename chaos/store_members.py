"""The coordination store's own nodes as fault targets: the control Redis (`control_store`), and
the etcd members by the part each plays at the moment of the fault (`etcd_member` with
`member: leader | follower | random`), asked of the members themselves
(`/v3/maintenance/status` on each member's client address).

Not for: the shards' nodes (see `fault_phase.select`), or running a cluster (see
`common.etcd_processes`).
"""

from __future__ import annotations

import random
from typing import Literal

import httpx

from chaos.errors import TargetError
from chaos.targets import DeploymentNode

MemberPart = Literal["leader", "follower", "random"]


def member_status(node: DeploymentNode, timeout: float = 0.5) -> dict | None:
    """The member's own view of the cluster, or None if it does not answer (dead, paused)."""
    try:
        answer = httpx.post(
            f"http://{node.host}:{node.port}/v3/maintenance/status", json={}, timeout=timeout
        )
        answer.raise_for_status()
        return answer.json()
    except (httpx.HTTPError, ValueError):
        return None


def leading_member(members: list[DeploymentNode]) -> DeploymentNode | None:
    """The member the answering members name as leader; None while none knows one."""
    ids: dict[str, DeploymentNode] = {}
    named: list[str] = []
    for node in members:
        status = member_status(node)
        if status is None:
            continue
        ids[str(status["header"]["member_id"])] = node
        leader = str(status.get("leader", "0"))
        if leader != "0":
            named.append(leader)
    for leader in named:
        if leader in ids:
            return ids[leader]
    return None


def etcd_member(
    nodes: list[DeploymentNode], part: MemberPart, rng: random.Random
) -> DeploymentNode:
    """One etcd member of the deployment playing `part` now. A follower is a member that
    answers and does not lead: a dead or paused one is no follower to fault."""
    members = [n for n in nodes if n.role == "etcd"]
    if not members:
        raise TargetError("no etcd member in the deployment (is its control store etcd?)")
    if part == "random":
        return rng.choice(members)
    leader = leading_member(members)
    if leader is None:
        raise TargetError("no etcd member knows a leader (an election is under way, or no quorum)")
    if part == "leader":
        return leader
    followers = [n for n in members if n is not leader and member_status(n) is not None]
    if not followers:
        raise TargetError("no etcd follower answers")
    return rng.choice(followers)


def members_of(endpoints: list[str]) -> list[DeploymentNode]:
    """The members at `endpoints` (client URLs) as nodes, each named for its URL."""
    nodes = []
    for url in endpoints:
        parsed = httpx.URL(url)
        nodes.append(DeploymentNode(name=url, role="etcd", host=parsed.host,
                                    port=parsed.port or 2379))  # fmt: skip
    return nodes


def members_not_serving(endpoints: list[str]) -> list[str]:
    """What keeps the etcd members at `endpoints` from serving as one cluster (empty: every
    member answers and each names the same leader, one of them). A member restarting, paused
    or cut off, or an election under way, is named."""
    problems = []
    leaders: set[str] = set()
    ids: set[str] = set()
    for node in members_of(endpoints):
        status = member_status(node, timeout=2.0)
        if status is None:
            problems.append(f"etcd member {node.name} does not answer")
            continue
        ids.add(str(status["header"]["member_id"]))
        leaders.add(str(status.get("leader", "0")))
    if not problems and (len(leaders) != 1 or not leaders <= ids):
        problems.append(f"the etcd members name no one leader among them ({sorted(leaders)})")
    return problems


# The roles of the coordination store's own nodes in a deployment.
STORE_NODE_ROLES = frozenset({"etcd", "control"})


def control_store(nodes: list[DeploymentNode]) -> DeploymentNode:
    """The control Redis node."""
    for node in nodes:
        if node.role == "control":
            return node
    raise TargetError("no control store node in the deployment")
