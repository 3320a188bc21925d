"""The Ratequeue failover: workflow steps that promote the replica holding every acknowledged
write, with the old primary fenced (DESIGN.md, "The zero-loss argument"; the membership rules
these steps keep are in docs/membership.md).

Order: fence the old primary (every reachable replica is parked at the sink, which freezes its
offset but keeps its replication history, so its siblings can later resync partially from the
promoted one) → choose the replica with the highest offset on the primary's lineage among enough
replicas → appoint it (fence epoch, writable) → repoint the others → publish the topology with
epoch + 1 and the new lineage → provision a replacement replica (started parked, listed, only
then attached) → verify health → hold the old primary for forensics.
Each step is idempotent: a resumed workflow may run a step again. Not for: deciding whether to
fail over (the rule's checks and the quorum do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from lazarus_lite.workflow import Escalate, StepContext, step
from ratequeue import membership
from ratequeue.membership import NoSafeCandidate, ReplicaPosition
from ratequeue.topology import EpochConflict, Lineage, NodeRef, Shard, Topology, TopologyStore

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


async def fence_node(node: NodeRef, *, drop_fence: bool = False) -> dict[str, Any]:
    """Park a node at the sink unless it is already there; report its frozen position."""
    async with connect(node) as conn:
        info = await membership.park(conn, drop_fence=drop_fence)
        enqueues = await membership.enqueues_applied(conn)
    position = membership.position_of(node.name, info, enqueues=enqueues)
    return {"name": node.name, "reachable": True, "replid": position.replid,
            "offset": position.offset, "enqueues": position.enqueues}  # fmt: skip


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
    failed_epoch = ctx.inputs.get("failed_shard_epoch")
    if failed_epoch is not None and int(failed_epoch) != shard.epoch:
        raise Escalate(
            f"{shard.primary.name} was appointed again (shard epoch {shard.epoch}, the report was "
            f"about {failed_epoch}): the topology moved on"
        )
    await ctx.assert_lock()

    async def fence_replica(node: NodeRef, drop_fence: bool = False) -> dict[str, Any]:
        try:
            return await fence_node(node, drop_fence=drop_fence)
        except (RedisError, OSError) as error:
            return {"name": node.name, "reachable": False, "error": str(error)}

    replicas = await asyncio.gather(*(fence_replica(r) for r in shard.replicas))
    old_primary = await fence_replica(shard.primary, drop_fence=True)
    return {
        "replicas": list(replicas),
        "old_primary_demoted": old_primary["reachable"],
        "topology_epoch": topology.epoch,
        "replica_count": len(shard.replicas),
        "lineage": shard.lineage.model_dump() if shard.lineage else None,
        "appointed_enqueues": shard.appointed_enqueues,
    }


@step("ratequeue.choose_candidate")
async def choose_candidate(ctx: StepContext) -> dict[str, Any]:
    """The replica with the highest offset on the primary's lineage, provided fresh positions
    came from at least N - k + 1 listed replicas (then one of them holds every write
    acknowledged at k); see `ratequeue.membership.most_complete_replica`."""
    fenced = ctx.output("fence_old_primary")
    replicas = fenced["replicas"]
    positions = [
        ReplicaPosition(r["name"], r["replid"], int(r["offset"]), r.get("enqueues"))
        for r in replicas
        if r["reachable"]
    ]
    lineage = Lineage.model_validate(fenced["lineage"]) if fenced.get("lineage") else None
    try:
        best, ignored = membership.most_complete_replica(
            positions,
            lineage,
            listed=len(replicas),
            min_replicas=int(ctx.inputs.get("min_replicas", 1)),
            appointed_enqueues=fenced.get("appointed_enqueues"),
        )
    except NoSafeCandidate as refusal:
        unreachable = [r["name"] for r in replicas if not r["reachable"]]
        raise Escalate(
            str(refusal) + (f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
        ) from None
    return {
        "candidate": best.name,
        "offset": best.offset,
        "offsets": {p.name: p.offset for p in positions},
        "not_comparable": ignored,
        "epoch": int(fenced["topology_epoch"]) + 1,
    }


def _node_named(topology: Topology, shard_id: str, name: str) -> NodeRef:
    shard = topology.shard(shard_id)
    for node in [shard.primary, *shard.replicas, *shard.forensics]:
        if node.name == name:
            return node
    raise LookupError(f"node {name} is not in shard {shard_id}")


def replicas_required_after_promotion(ctx: StepContext) -> int:
    """The new primary's write quorum: k, or fewer if fewer replicas stay listed (every replica
    the fence parked, but the candidate)."""
    stays_listed = sum(1 for r in ctx.output("fence_old_primary")["replicas"] if r["reachable"])
    return membership.required_replicas(int(ctx.inputs.get("min_replicas", 1)), stays_listed - 1)


@step("ratequeue.promote_candidate")
async def promote_candidate(ctx: StepContext) -> dict[str, Any]:
    """Appoint the candidate: REPLICAOF NO ONE, writable, its fence epoch; record its lineage."""
    choice = ctx.output("choose_candidate")
    topology = await load_topology(ctx)
    candidate = _node_named(topology, ctx.inputs["shard"], choice["candidate"])
    await ctx.assert_lock()
    async with connect(candidate) as conn:
        lineage = await membership.appoint_primary(
            conn, choice["epoch"], min_replicas=replicas_required_after_promotion(ctx)
        )
        enqueues = await membership.enqueues_applied(conn)
    return {"primary": candidate.name, "epoch": choice["epoch"], "promoted_at": time.time(),
            "lineage": lineage.model_dump() if lineage else None,
            "appointed_enqueues": enqueues}  # fmt: skip


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

    async def repoint(node: NodeRef) -> str | None:
        # Listed already (as replicas of the old primary), so they may follow the new one.
        try:
            async with connect(node) as conn:
                await membership.attach(conn, candidate)
            return node.name
        except (RedisError, OSError):
            return None

    repointed = [n for n in await asyncio.gather(*(repoint(o) for o in others)) if n]
    return {"replicas": repointed, "lost": [o.name for o in others if o.name not in repointed]}


async def compare_and_set_loop(ctx: StepContext, change: Any, attempts: int = 10) -> Topology:
    """Apply `change(topology) -> Topology | None` with compare-and-set, retrying on conflicts
    (another shard's failover may publish in between). None means: nothing to change."""
    store = TopologyStore(ctx.env.control)
    return await compare_and_set_loop_on(store, change, ctx.assert_lock, attempts)


async def compare_and_set_loop_on(
    store: TopologyStore,
    change: Callable[[Topology], Awaitable[Topology | None]],
    assert_lock: Callable[[], Awaitable[None]],
    attempts: int = 10,
) -> Topology:
    """`compare_and_set_loop` for any holder of the shard's lock (`assert_lock` raises once it
    is lost, before anything is stored)."""
    for _ in range(attempts):
        current = await store.load()
        if current is None:
            raise RuntimeError("no topology in the control store")
        updated = await change(current)
        if updated is None:
            return current
        await assert_lock()
        try:
            await store.compare_and_set(current.epoch, updated)
            return updated
        except EpochConflict:
            continue
    raise RuntimeError("topology kept changing; could not publish")


@step("ratequeue.publish_topology")
async def publish_topology(ctx: StepContext) -> dict[str, Any]:
    """Epoch + 1: the candidate is the shard's primary, the other replicas the fence parked stay
    listed (repointed or not), the old primary and any replica the fence could not reach are
    held for forensics."""
    shard_id = ctx.inputs["shard"]
    choice = ctx.output("choose_candidate")
    parked = {r["name"] for r in ctx.output("fence_old_primary")["replicas"] if r["reachable"]}
    promoted = ctx.output("promote_candidate").get("lineage")
    lineage = Lineage.model_validate(promoted) if promoted else None

    async def change(topology: Topology) -> Topology | None:
        shard = topology.shard(shard_id)
        if shard.primary.name == choice["candidate"]:
            return None  # published by an earlier run of this step
        epoch = topology.epoch + 1
        candidate = _node_named(topology, shard_id, choice["candidate"])
        if epoch != choice["epoch"]:  # another change came first: fence with the epoch we get
            async with connect(candidate) as conn:
                await membership.appoint_primary(
                    conn, epoch, min_replicas=replicas_required_after_promotion(ctx)
                )
        # Every replica parked by the fence stays listed, repointed or not: a repoint that timed
        # out may still land, and only a listed replica is read by the N - k + 1 rule
        # (docs/membership.md, M4); the shard keeper attaches it once it answers. A replica
        # the fence could not reach may still follow the old primary (and apply writes it never
        # acknowledged): it goes to forensics with it, and no controller ever attaches it.
        unreached = [r for r in shard.replicas if r.name not in parked]
        new_shard = shard.model_copy(
            update={
                "primary": candidate,
                "replicas": [
                    r for r in shard.replicas if r.name in parked and r.name != candidate.name
                ],
                "forensics": [*shard.forensics, shard.primary, *unreached],
                "epoch": epoch,
                "status": "ok",
                "lineage": lineage,
                "appointed_enqueues": ctx.output("promote_candidate").get("appointed_enqueues"),
            }
        )
        return topology.next_with(new_shard)

    published = await compare_and_set_loop(ctx, change)
    shard = published.shard(shard_id)
    return {"epoch": published.epoch, "primary": shard.primary.name, "published_at": time.time()}


@step("ratequeue.provision_replacement")
async def provision_replacement(ctx: StepContext) -> dict[str, Any]:
    """Bring the shard back to its replica count: the actuator starts a parked node, the topology
    lists it (epoch + 1; the primary's shard epoch does not change), and only then does it attach
    to the primary, so `WAIT` never counts a replica the N - k + 1 rule cannot see."""
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        return {"skipped": "no actuator configured"}
    shard_id = ctx.inputs["shard"]
    target = int(
        ctx.inputs.get("target_replicas") or ctx.output("fence_old_primary")["replica_count"]
    )
    topology = await load_topology(ctx)
    shard = topology.shard(shard_id)
    name = f"{shard_id}-replica-e{shard.epoch}"
    listed = any(r.name == name for r in shard.replicas)
    if not listed and len(shard.replicas) >= target:
        return {"skipped": f"shard has {len(shard.replicas)} replicas (target {target})"}
    await ctx.assert_lock()
    node = await actuator.provision_replica(shard_id, name)

    async def change(current: Topology) -> Topology | None:
        current_shard = current.shard(shard_id)
        if any(r.name == node.name for r in current_shard.replicas):
            return None
        new_shard = current_shard.model_copy(update={"replicas": [*current_shard.replicas, node]})
        return current.next_with(new_shard)

    listed = (await compare_and_set_loop(ctx, change)).shard(shard_id)
    primary = listed.primary
    await ctx.assert_lock()
    try:
        async with connect(node) as replica_conn, connect(primary) as primary_conn:
            await membership.attach(replica_conn, primary)
            await membership.wait_in_sync(primary_conn, replica_conn, timeout=20)
            # With the replacement in sync the primary needs k replicas again (it may have been
            # appointed with fewer): a primary cut off from now on stops serving stale clients.
            await ctx.assert_lock()
            needed = membership.required_replicas(
                int(ctx.inputs.get("min_replicas", 1)), len(listed.replicas)
            )
            for setting, value in membership.write_quorum(needed).items():
                await primary_conn.config_set(setting, value)
    except (RedisError, OSError, TimeoutError) as error:
        if not await answers(primary):
            # A second failure: this workflow's work is done or moot; give the lock back so
            # the failover of the new primary is not kept waiting on it.
            raise Escalate(
                f"primary {primary.name} stopped answering while {node.name} was joining it"
            ) from error
        raise
    return {"replica": node.name, "address": node.peer_address}


async def answers(node: NodeRef) -> bool:
    try:
        async with connect(node, timeout=0.5) as conn:
            return bool(await conn.ping())
    except (RedisError, OSError):
        return False


@step("ratequeue.verify_health")
async def verify_health(ctx: StepContext) -> dict[str, Any]:
    """The new primary answers and WAIT confirms `min_replicas` replicas."""
    shard = (await load_topology(ctx)).shard(ctx.inputs["shard"])
    k = int(ctx.inputs.get("min_replicas", 1))
    detached = await detach_unlisted_replicas(shard, ctx.assert_lock)
    async with connect(shard.primary, timeout=3) as conn:
        await write_once_replicas_follow(conn, deadline=time.monotonic() + 3)
        confirmed = int(await conn.execute_command("WAIT", k, 1000))
    if confirmed < k:
        raise RuntimeError(f"WAIT confirmed {confirmed} of {k} replicas on {shard.primary.name}")
    return {"primary": shard.primary.name, "replicas_confirmed": confirmed, "detached": detached}


async def write_once_replicas_follow(conn: aioredis.Redis, deadline: float) -> None:
    """One write for `WAIT` to cover. An appointed primary refuses writes (NOREPLICAS) until
    `min_replicas` replicas follow it, which takes a moment after a repoint."""
    while True:
        try:
            await conn.incr("rq:barrier")
            return
        except ResponseError as error:
            if not str(error).startswith("NOREPLICAS") or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.05)


def unlisted_replicas(shard: Shard, info: dict[str, Any]) -> list[tuple[str, int]]:
    """(ip, port) of the replicas the primary's `INFO replication` shows that are not listed."""
    listed = {r.port for r in shard.replicas}
    return [
        (str(value["ip"]), int(value["port"]))
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict) and value["port"] not in listed
    ]


async def detach_unlisted_replicas(
    shard: Shard, assert_lock: Callable[[], Awaitable[None]]
) -> list[str]:
    """Only listed replicas may follow the primary: `WAIT` counts every replica, and the next
    failover can only ask the listed ones (N - k + 1). A replica attached but not listed (say,
    one provisioned by an interrupted run of a step) is parked."""
    async with connect(shard.primary, timeout=3) as conn:
        strays = unlisted_replicas(shard, await conn.info("replication"))
    if strays:
        await assert_lock()
    for host, port in strays:
        stray = NodeRef(name=f"unlisted-{port}", host=host, port=port)
        try:
            await fence_node(stray)
        except (RedisError, OSError) as error:
            # WAIT would count it: the replicas cannot be trusted until it is parked.
            raise RuntimeError(
                f"unlisted replica {host}:{port} could not be parked: {error}"
            ) from error
    return [f"{host}:{port}" for host, port in strays]


async def hold_for_forensics(node: NodeRef, policy: str) -> str:
    """Apply the forensics policy to a former primary: `demote` parks it (read-only, its fence
    dropped, its data kept for examination), `stop` shuts it down. Returns what was done. A
    former primary that restarts boots parked already: it is simply held."""
    try:
        async with connect(node, timeout=0.5) as conn:
            if policy == "stop":
                with contextlib.suppress(RedisError):  # SHUTDOWN closes the connection
                    await conn.execute_command("SHUTDOWN", "NOSAVE")
                return "stopped"
            if membership.is_parked(await conn.info("replication")):
                return "held"
            await membership.park(conn, drop_fence=True)
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
        return topology.next_with(new_shard)

    with contextlib.suppress(Exception):
        await compare_and_set_loop(ctx, change, attempts=3)
    await ctx.env.locks.release(held)
    return {"shard": shard_id, "status": "escalated"}
