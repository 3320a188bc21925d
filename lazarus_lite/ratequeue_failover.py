"""The Ratequeue failover: workflow steps that promote the replica holding every acknowledged
write, with the old primary fenced (DESIGN.md, "The zero-loss argument").

Order: fence the old primary (every reachable replica is pointed at a dead end, which freezes
its offset but keeps its replication history, so its siblings can later resync partially from
the promoted one) → choose the replica with the highest offset among enough replicas → promote
it and write its new fence epoch → repoint the others → publish the topology with epoch + 1 →
provision a replacement replica → verify health → hold the old primary for forensics.
Each step is idempotent: a resumed workflow may run a step again. Not for: deciding whether to
fail over (the rule's checks and the quorum do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from lazarus_lite.workflow import Escalate, StepContext, step
from ratequeue.topology import FENCE_KEY, EpochConflict, NodeRef, Topology, TopologyStore

# Where a fenced node is pointed: nothing listens on port 1, so it replicates from nobody, keeps
# its offset and replication id, and refuses writes (a replica is read-only).
FENCE_SINK = ("127.0.0.1", 1)
FORENSICS_POLICIES = ("demote", "stop")


@contextlib.asynccontextmanager
async def connect(node: NodeRef, timeout: float = 1.0) -> AsyncIterator[aioredis.Redis]:
    """A short-lived connection to a node's peer address (where controllers reach it)."""
    connection = aioredis.Redis(
        host=node.peer_host or node.host,
        port=node.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.aclose()


async def load_topology(ctx: StepContext) -> Topology:
    topology = await TopologyStore(ctx.env.control).load()
    if topology is None:
        raise RuntimeError("no topology in the control store")
    return topology


def _points_at(info: dict, host: str, port: int) -> bool:
    return str(info.get("master_host")) == host and int(info.get("master_port", 0)) == port


def _offset_of(info: dict) -> tuple[str, int]:
    if info.get("role") == "slave":
        return str(info.get("master_replid")), int(info.get("slave_repl_offset", -1))
    return str(info.get("master_replid2") or info.get("master_replid")), int(
        info.get("master_repl_offset", -1)
    )


async def fence_node(node: NodeRef) -> dict[str, Any]:
    """Point a node at the sink unless it is already there; report its frozen offset."""
    async with connect(node) as conn:
        info = await conn.info("replication")
        if not _points_at(info, *FENCE_SINK):
            await conn.execute_command("REPLICAOF", *FENCE_SINK)
            info = await conn.info("replication")
    replid, offset = _offset_of(info)
    return {"name": node.name, "reachable": True, "replid": replid, "offset": offset}


@step("ratequeue.fence_old_primary")
async def fence_old_primary(ctx: StepContext) -> dict[str, Any]:
    """Cut the old primary off from every reachable replica (so WAIT on it can never succeed
    again); if the old primary itself answers, demote it to a read-only node as well."""
    topology = await load_topology(ctx)
    shard = topology.shard(ctx.inputs["shard"])
    if shard.primary.name != ctx.inputs["failed_primary"]:
        raise Escalate(
            f"shard {shard.id}'s primary is now {shard.primary.name}, not "
            f"{ctx.inputs['failed_primary']}: the topology moved on"
        )
    await ctx.assert_lock()

    async def fence_replica(node: NodeRef) -> dict[str, Any]:
        try:
            return await fence_node(node)
        except (RedisError, OSError) as error:
            return {"name": node.name, "reachable": False, "error": str(error)}

    replicas = await asyncio.gather(*(fence_replica(r) for r in shard.replicas))
    old_primary = await fence_replica(shard.primary)
    return {
        "replicas": list(replicas),
        "old_primary_demoted": old_primary["reachable"],
        "topology_epoch": topology.epoch,
        "replica_count": len(shard.replicas),
    }


@step("ratequeue.choose_candidate")
async def choose_candidate(ctx: StepContext) -> dict[str, Any]:
    """The replica with the highest offset, provided fresh offsets came from at least N - k + 1
    replicas of one history (then one of them holds every write acknowledged at k)."""
    fenced = ctx.output("fence_old_primary")
    replicas = fenced["replicas"]
    reachable = [r for r in replicas if r["reachable"]]
    k = int(ctx.inputs.get("min_replicas", 1))
    needed = max(1, len(replicas) - k + 1)
    if len(reachable) < needed:
        raise Escalate(
            f"only {len(reachable)} of {len(replicas)} replicas could be asked; {needed} are "
            f"needed to be sure the promoted one holds every write acknowledged at {k}"
        )
    histories = {r["replid"] for r in reachable}
    if len(histories) != 1:
        raise Escalate(f"replicas follow different replication histories: {sorted(histories)}")
    best = max(reachable, key=lambda r: (r["offset"], r["name"]))
    return {
        "candidate": best["name"],
        "offset": best["offset"],
        "offsets": {r["name"]: r["offset"] for r in reachable},
        "epoch": int(fenced["topology_epoch"]) + 1,
    }


def _node_named(topology: Topology, shard_id: str, name: str) -> NodeRef:
    shard = topology.shard(shard_id)
    for node in [shard.primary, *shard.replicas, *shard.forensics]:
        if node.name == name:
            return node
    raise LookupError(f"node {name} is not in shard {shard_id}")


@step("ratequeue.promote_candidate")
async def promote_candidate(ctx: StepContext) -> dict[str, Any]:
    """REPLICAOF NO ONE on the candidate and write its fence epoch."""
    choice = ctx.output("choose_candidate")
    topology = await load_topology(ctx)
    candidate = _node_named(topology, ctx.inputs["shard"], choice["candidate"])
    await ctx.assert_lock()
    async with connect(candidate) as conn:
        info = await conn.info("replication")
        if info.get("role") != "master":
            await conn.execute_command("REPLICAOF", "NO", "ONE")
        await conn.set(FENCE_KEY, str(choice["epoch"]))
    return {"primary": candidate.name, "epoch": choice["epoch"], "promoted_at": time.time()}


@step("ratequeue.repoint_replicas")
async def repoint_replicas(ctx: StepContext) -> dict[str, Any]:
    """The other reachable replicas follow the new primary (a partial resync: same history)."""
    choice = ctx.output("choose_candidate")
    topology = await load_topology(ctx)
    shard_id = ctx.inputs["shard"]
    candidate = _node_named(topology, shard_id, choice["candidate"])
    others = [
        _node_named(topology, shard_id, r["name"])
        for r in ctx.output("fence_old_primary")["replicas"]
        if r["reachable"] and r["name"] != candidate.name
    ]
    await ctx.assert_lock()
    host, port = candidate.peer_host or candidate.host, candidate.port

    async def repoint(node: NodeRef) -> str | None:
        try:
            async with connect(node) as conn:
                if not _points_at(await conn.info("replication"), host, port):
                    await conn.execute_command("REPLICAOF", host, str(port))
            return node.name
        except (RedisError, OSError):
            return None

    repointed = [n for n in await asyncio.gather(*(repoint(o) for o in others)) if n]
    return {"replicas": repointed, "lost": [o.name for o in others if o.name not in repointed]}


async def compare_and_set_loop(ctx: StepContext, change: Any, attempts: int = 10) -> Topology:
    """Apply `change(topology) -> Topology | None` with compare-and-set, retrying on conflicts
    (another shard's failover may publish in between). None means: nothing to change."""
    store = TopologyStore(ctx.env.control)
    for _ in range(attempts):
        current = await load_topology(ctx)
        updated = await change(current)
        if updated is None:
            return current
        await ctx.assert_lock()
        try:
            await store.compare_and_set(current.epoch, updated)
            return updated
        except EpochConflict:
            continue
    raise RuntimeError("topology kept changing; could not publish")


@step("ratequeue.publish_topology")
async def publish_topology(ctx: StepContext) -> dict[str, Any]:
    """Epoch + 1: the candidate is the shard's primary, the old primary and any replica that
    could not be repointed are held for forensics."""
    shard_id = ctx.inputs["shard"]
    choice = ctx.output("choose_candidate")
    repointed = set(ctx.output("repoint_replicas")["replicas"])

    async def change(topology: Topology) -> Topology | None:
        shard = topology.shard(shard_id)
        if shard.primary.name == choice["candidate"]:
            return None  # published by an earlier run of this step
        epoch = topology.epoch + 1
        candidate = _node_named(topology, shard_id, choice["candidate"])
        if epoch != choice["epoch"]:  # another change came first: fence with the epoch we get
            async with connect(candidate) as conn:
                await conn.set(FENCE_KEY, str(epoch))
        held = [shard.primary] + [
            r for r in shard.replicas if r.name not in repointed and r.name != candidate.name
        ]
        new_shard = shard.model_copy(
            update={
                "primary": candidate,
                "replicas": [r for r in shard.replicas if r.name in repointed],
                "forensics": [*shard.forensics, *held],
                "epoch": epoch,
                "status": "ok",
            }
        )
        return Topology(
            epoch=epoch, shards=[new_shard if s.id == shard_id else s for s in topology.shards]
        )

    published = await compare_and_set_loop(ctx, change)
    shard = published.shard(shard_id)
    return {"epoch": published.epoch, "primary": shard.primary.name, "published_at": time.time()}


@step("ratequeue.provision_replacement")
async def provision_replacement(ctx: StepContext) -> dict[str, Any]:
    """Bring the shard back to its replica count through the actuator, then list the new replica
    in the topology (epoch + 1; the primary's shard epoch does not change)."""
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        return {"skipped": "no actuator configured"}
    shard_id = ctx.inputs["shard"]
    target = int(
        ctx.inputs.get("target_replicas") or ctx.output("fence_old_primary")["replica_count"]
    )
    topology = await load_topology(ctx)
    shard = topology.shard(shard_id)
    if len(shard.replicas) >= target:
        return {"skipped": f"shard has {len(shard.replicas)} replicas (target {target})"}
    await ctx.assert_lock()
    name = f"{shard_id}-replica-e{shard.epoch}"
    node = await actuator.provision_replica(shard_id, name, shard.primary)

    async def change(current: Topology) -> Topology | None:
        current_shard = current.shard(shard_id)
        if any(r.name == node.name for r in current_shard.replicas):
            return None
        new_shard = current_shard.model_copy(update={"replicas": [*current_shard.replicas, node]})
        return Topology(
            epoch=current.epoch + 1,
            shards=[new_shard if s.id == shard_id else s for s in current.shards],
        )

    await compare_and_set_loop(ctx, change)
    return {"replica": node.name, "address": node.peer_address}


@step("ratequeue.verify_health")
async def verify_health(ctx: StepContext) -> dict[str, Any]:
    """The new primary answers and WAIT confirms `min_replicas` replicas."""
    shard = (await load_topology(ctx)).shard(ctx.inputs["shard"])
    k = int(ctx.inputs.get("min_replicas", 1))
    detached = await detach_unlisted_replicas(ctx, shard)
    async with connect(shard.primary, timeout=3) as conn:
        await conn.incr("rq:barrier")
        confirmed = int(await conn.execute_command("WAIT", k, 1000))
    if confirmed < k:
        raise RuntimeError(f"WAIT confirmed {confirmed} of {k} replicas on {shard.primary.name}")
    return {"primary": shard.primary.name, "replicas_confirmed": confirmed, "detached": detached}


async def detach_unlisted_replicas(ctx: StepContext, shard: Any) -> list[str]:
    """Only listed replicas may follow the primary: `WAIT` counts every replica, and the next
    failover can only ask the listed ones (N - k + 1). A replica attached but not listed (say,
    one provisioned by an interrupted run of a step) is pointed at the sink."""
    listed = {r.port for r in shard.replicas}
    async with connect(shard.primary, timeout=3) as conn:
        info = await conn.info("replication")
    strays = []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict) and value["port"] not in listed:
            strays.append((str(value["ip"]), int(value["port"])))
    if strays:
        await ctx.assert_lock()
    for host, port in strays:
        stray = NodeRef(name=f"unlisted-{port}", host=host, port=port)
        with contextlib.suppress(RedisError, OSError):
            await fence_node(stray)
    return [f"{host}:{port}" for host, port in strays]


async def hold_for_forensics(node: NodeRef, policy: str) -> str:
    """Apply the forensics policy to a former primary: `demote` points it at the sink (read-only,
    its data kept for examination), `stop` shuts it down. Returns what was done."""
    try:
        async with connect(node, timeout=0.5) as conn:
            if policy == "stop":
                with contextlib.suppress(RedisError):  # SHUTDOWN closes the connection
                    await conn.execute_command("SHUTDOWN", "NOSAVE")
                return "stopped"
            info = await conn.info("replication")
            if _points_at(info, *FENCE_SINK):
                return "held"
            await conn.execute_command("REPLICAOF", *FENCE_SINK)
            return "demoted"
    except (RedisError, OSError):
        return "unreachable"


@step("ratequeue.hold_old_primary")
async def hold_old_primary(ctx: StepContext) -> dict[str, Any]:
    topology = await load_topology(ctx)
    old = _node_named(topology, ctx.inputs["shard"], ctx.inputs["failed_primary"])
    policy = ctx.inputs.get("forensics_policy", "demote")
    return {"old_primary": old.name, "state": await hold_for_forensics(old, policy)}


@step("ratequeue.mark_escalated")
async def mark_escalated(ctx: StepContext) -> dict[str, Any]:
    """On failure: leave the shard as it is (one primary per epoch holds at every step), flag it
    for a person, and give the lock back."""
    shard_id = ctx.inputs["shard"]
    held = ctx.held_lock()
    if held is None or not await ctx.env.locks.renew(held):
        # Not this workflow's shard to flag: it never took the lock, or lost it to another.
        return {"shard": shard_id, "status": "unchanged: this workflow did not hold the lock"}

    async def change(topology: Topology) -> Topology | None:
        shard = topology.shard(shard_id)
        if shard.status == "escalated":
            return None
        new_shard = shard.model_copy(update={"status": "escalated"})
        return Topology(
            epoch=topology.epoch + 1,
            shards=[new_shard if s.id == shard_id else s for s in topology.shards],
        )

    with contextlib.suppress(Exception):
        await compare_and_set_loop(ctx, change, attempts=3)
    await ctx.env.locks.release(held)
    return {"shard": shard_id, "status": "escalated"}
