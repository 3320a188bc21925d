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
from pydantic import Field, field_validator, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from detection import probes
from detection.probes import QUIET_DRIVER, QUIET_PROTOCOL
from lazarus_lite.errors import Escalate
from lazarus_lite.workflow.context import StepContext, StepOutput, WorkflowInputs
from lazarus_lite.workflow.registry import step
from ratequeue import membership
from ratequeue.errors import EpochConflict, NoSafeCandidate
from ratequeue.membership import ReplicaPosition
from ratequeue.topology import HeldNode, Lineage, NodeRef, Shard, Topology, TopologySource

FORENSICS_POLICIES = ("demote", "stop")
# How long the repoint waits for the new primary to count its replicas before the topology is
# published anyway (a replica that died meanwhile: the shard is short until it is replaced).
WRITABLE_WAIT_SECONDS = 0.5

# How long the fence waits for the old primary's own demotion, once its replicas are parked: a
# node that answers does it in a few round trips; a silent one (stopped, cut off) would hold
# the promotion for its connection timeout, for nothing (see `fence_old_primary`).
OLD_PRIMARY_DEMOTION_WAIT = 0.1

# The workflow step names whose outputs later steps read (`ratequeue_failover.yaml` uses them;
# the load-time check refuses a copy that renames one).
FENCE_OLD_PRIMARY = "fence_old_primary"
CHOOSE_CANDIDATE = "choose_candidate"
PROMOTE_CANDIDATE = "promote_candidate"
PUBLISH_TOPOLOGY = "publish_topology"


class ShardFailoverInputs(WorkflowInputs):
    """What the controller says about the failed primary, and its settings."""

    shard: str
    failed_primary: str | None = None
    failed_shard_epoch: int | None = Field(None, description="the primary's shard epoch")
    min_replicas: int = Field(1, description="k: the write quorum")
    target_replicas: int | None = Field(None, description="default: as many as before")
    forensics_policy: str = Field("demote", description=f"one of {FORENSICS_POLICIES}")

    @field_validator("failed_shard_epoch", "target_replicas", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # Event data is free-form JSON: an empty value means "not said", and a number written
        # as text or with a fraction counts as its whole part (as `int()` always read it), so
        # an odd event still fails over instead of escalating on a type.
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, float | str):
            with contextlib.suppress(ValueError, OverflowError):
                return int(float(value)) if isinstance(value, str) else int(value)
        return value


class NodeFenced(StepOutput):
    """One node after the fence: parked at the sink with its position frozen, or unreachable."""

    name: str
    reachable: bool
    replid: str | None = None
    offset: int | None = None
    enqueues: int | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _reached_nodes_have_a_position(self) -> NodeFenced:
        # A reached node's position is what the zero-loss comparison reads: never guess it.
        if self.reachable and (self.replid is None or self.offset is None):
            raise ValueError(f"{self.name} is reachable but its replid or offset is missing")
        return self


class FenceResult(StepOutput):
    replicas: list[NodeFenced]
    old_primary_demoted: bool
    old_primary_error: str | None = Field(None, description="why it was not demoted")
    topology_epoch: int
    replica_count: int
    lineage: Lineage | None = None
    appointed_enqueues: int | None = None

    def reached(self) -> list[NodeFenced]:
        return [r for r in self.replicas if r.reachable]


class CandidateChosen(StepOutput):
    candidate: str
    offset: int
    offsets: dict[str, int]
    not_comparable: dict[str, str] = Field(description="replica: why it was left out")
    epoch: int = Field(description="the fence epoch it is appointed with")


class CandidatePromoted(StepOutput):
    primary: str
    epoch: int
    promoted_at: float
    lineage: Lineage | None = None
    appointed_enqueues: int | None = None


class ReplicasRepointed(StepOutput):
    replicas: list[str]
    lost: list[str]
    good_replicas: int | None = Field(
        None,
        description="replicas the new primary counted for its write quorum once they were "
        "repointed (it accepts writes from `replicas_required_after_promotion` on)",
    )


class TopologyPublished(StepOutput):
    epoch: int
    primary: str
    published_at: float


class ReplacementProvisioned(StepOutput):
    replica: str | None = None
    address: str | None = None
    skipped: str | None = Field(None, description="why no replacement was provisioned")


class HealthVerified(StepOutput):
    primary: str
    replicas_confirmed: int
    detached: list[str]


class OldPrimaryHeld(StepOutput):
    old_primary: str
    state: str


class ShardFlagged(StepOutput):
    shard: str | None
    status: str
    replacement: str | None = Field(
        None, description="what became of a replacement this workflow may have started"
    )


@contextlib.asynccontextmanager
async def connect(node: NodeRef, timeout: float = 1.0) -> AsyncIterator[aioredis.Redis]:
    """A short-lived connection to a node's peer address (where controllers reach it)."""
    connection = aioredis.Redis(
        host=node.peer_host or node.host,
        port=node.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        # No greeting round trips on the failover's path (`detection.probes.QUIET_DRIVER`).
        driver_info=QUIET_DRIVER,
        protocol=QUIET_PROTOCOL,
    )
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.aclose()


async def load_topology(ctx: StepContext) -> Topology:
    """The topology as the step's gate read it with the kill switch (one round trip for both),
    else read now."""
    if ctx.store_reads is not None:
        topology = ctx.store_reads.topology
    else:
        topology = await ctx.env.store.topology.load()
    if topology is None:
        raise RuntimeError("no topology in the control store")
    return topology


async def fence_node(node: NodeRef, *, drop_fence: bool = False) -> NodeFenced:
    """Park a node at the sink unless it is already there; report its frozen position."""
    async with connect(node) as conn:
        info = await membership.park(conn, drop_fence=drop_fence)
        enqueues = await membership.enqueues_applied(conn)
    position = membership.position_of(node.name, info, enqueues=enqueues)
    return NodeFenced(
        name=node.name,
        reachable=True,
        replid=position.replid,
        offset=position.offset,
        enqueues=position.enqueues,
    )


@step("ratequeue.fence_old_primary", output=FenceResult, inputs=ShardFailoverInputs)
async def fence_old_primary(ctx: StepContext) -> FenceResult:
    """Cut the old primary off from every reachable replica (so WAIT on it can never succeed
    again); if the old primary itself answers at once, demote it to a read-only node as well."""
    inputs = ctx.inputs_as(ShardFailoverInputs)
    topology = await load_topology(ctx)
    shard = topology.shard(inputs.shard)
    if shard.primary.name != inputs.failed_primary:
        raise Escalate(
            f"shard {shard.id}'s primary is now {shard.primary.name}, not "
            f"{inputs.failed_primary}: the topology moved on"
        )
    failed_epoch = inputs.failed_shard_epoch
    if failed_epoch is not None and failed_epoch != shard.epoch:
        raise Escalate(
            f"{shard.primary.name} was appointed again (shard epoch {shard.epoch}, the report was "
            f"about {failed_epoch}): the topology moved on"
        )
    await ctx.assert_lock()

    async def fence_replica(node: NodeRef, drop_fence: bool = False) -> NodeFenced:
        try:
            return await fence_node(node, drop_fence=drop_fence)
        except (RedisError, OSError) as error:
            return NodeFenced(name=node.name, reachable=False, error=str(error))

    replicas = await asyncio.gather(*(fence_replica(r) for r in shard.replicas))
    # From here the old primary can acknowledge nothing (its reachable replicas are parked:
    # `WAIT` has at most k - 1 replicas to count, docs/membership.md "What a write of an older
    # epoch meets"), so its own demotion is no condition of the promotion: the quorum found it
    # silent, and it is not waited for longer than a live node takes to answer.
    # `hold_old_primary` demotes it later if it is still a primary.
    try:
        async with asyncio.timeout(OLD_PRIMARY_DEMOTION_WAIT):
            old_primary = await fence_replica(shard.primary, drop_fence=True)
    except TimeoutError:
        silent = f"no answer within {OLD_PRIMARY_DEMOTION_WAIT} s"
        old_primary = NodeFenced(name=shard.primary.name, reachable=False, error=silent)
    return FenceResult(
        replicas=list(replicas),
        old_primary_demoted=old_primary.reachable,
        old_primary_error=old_primary.error,
        topology_epoch=topology.epoch,
        replica_count=len(shard.replicas),
        lineage=shard.lineage,
        appointed_enqueues=shard.appointed_enqueues,
    )


@step(
    "ratequeue.choose_candidate",
    output=CandidateChosen,
    reads={FENCE_OLD_PRIMARY: FenceResult},
    inputs=ShardFailoverInputs,
)
async def choose_candidate(ctx: StepContext) -> CandidateChosen:
    """The replica with the highest offset on the primary's lineage, provided fresh positions
    came from at least N - k + 1 listed replicas (then one of them holds every write
    acknowledged at k); see `ratequeue.membership.most_complete_replica`."""
    fenced = ctx.output_of(FENCE_OLD_PRIMARY, FenceResult)
    positions = [
        ReplicaPosition(r.name, r.replid or "", r.offset or 0, r.enqueues)  # set: validated
        for r in fenced.reached()
    ]
    try:
        best, ignored = membership.most_complete_replica(
            positions,
            fenced.lineage,
            listed=len(fenced.replicas),
            min_replicas=ctx.inputs_as(ShardFailoverInputs).min_replicas,
            appointed_enqueues=fenced.appointed_enqueues,
        )
    except NoSafeCandidate as refusal:
        unreachable = [r.name for r in fenced.replicas if not r.reachable]
        raise Escalate(
            str(refusal) + (f"; unreachable: {', '.join(unreachable)}" if unreachable else "")
        ) from None
    return CandidateChosen(
        candidate=best.name,
        offset=best.offset,
        offsets={p.name: p.offset for p in positions},
        not_comparable=ignored,
        epoch=fenced.topology_epoch + 1,
    )


def _node_named(topology: Topology, shard_id: str, name: str) -> NodeRef:
    shard = topology.shard(shard_id)
    for node in [shard.primary, *shard.replicas, *shard.forensics]:
        if node.name == name:
            return node
    raise LookupError(f"node {name} is not in shard {shard_id}")


def replicas_required_after_promotion(ctx: StepContext) -> int:
    """The new primary's write quorum: k, or fewer if fewer replicas stay listed (every replica
    the fence parked, but the candidate)."""
    stays_listed = len(ctx.output_of(FENCE_OLD_PRIMARY, FenceResult).reached())
    k = ctx.inputs_as(ShardFailoverInputs).min_replicas
    return membership.required_replicas(k, stays_listed - 1)


@step(
    "ratequeue.promote_candidate",
    output=CandidatePromoted,
    reads={CHOOSE_CANDIDATE: CandidateChosen, FENCE_OLD_PRIMARY: FenceResult},
    inputs=ShardFailoverInputs,
)
async def promote_candidate(ctx: StepContext) -> CandidatePromoted:
    """Appoint the candidate: REPLICAOF NO ONE, writable, its fence epoch; record its lineage."""
    choice = ctx.output_of(CHOOSE_CANDIDATE, CandidateChosen)
    topology = await load_topology(ctx)
    candidate = _node_named(topology, ctx.inputs_as(ShardFailoverInputs).shard, choice.candidate)
    await ctx.assert_lock()
    async with connect(candidate) as conn:
        lineage = await membership.appoint_primary(
            conn, choice.epoch, min_replicas=replicas_required_after_promotion(ctx)
        )
        enqueues = await membership.enqueues_applied(conn)
    return CandidatePromoted(
        primary=candidate.name,
        epoch=choice.epoch,
        promoted_at=time.time(),
        lineage=lineage,
        appointed_enqueues=enqueues,
    )


async def good_replicas_of(candidate: NodeRef, required: int) -> int | None:
    """How many replicas the new primary counts once `required` are there, or after at most
    about WRITABLE_WAIT_SECONDS; None if it did not answer (publishing goes on regardless: the
    topology must name the new primary). The whole wait, connecting included, is bounded, so a
    stalled candidate holds the publication no longer than the write quorum would have."""
    bound = WRITABLE_WAIT_SECONDS + 0.1
    try:
        async with asyncio.timeout(bound), connect(candidate, bound) as conn:
            return await membership.writable_with(conn, required, WRITABLE_WAIT_SECONDS)
    except (RedisError, OSError, TimeoutError):
        return None


@step(
    "ratequeue.repoint_replicas",
    output=ReplicasRepointed,
    reads={CHOOSE_CANDIDATE: CandidateChosen, FENCE_OLD_PRIMARY: FenceResult},
    inputs=ShardFailoverInputs,
)
async def repoint_replicas(ctx: StepContext) -> ReplicasRepointed:
    """The other reachable replicas follow the new primary (a partial resync: same history)."""
    choice = ctx.output_of(CHOOSE_CANDIDATE, CandidateChosen)
    topology = await load_topology(ctx)
    shard_id = ctx.inputs_as(ShardFailoverInputs).shard
    candidate = _node_named(topology, shard_id, choice.candidate)
    others = [
        _node_named(topology, shard_id, r.name)
        for r in ctx.output_of(FENCE_OLD_PRIMARY, FenceResult).reached()
        if r.name != candidate.name
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
    lost = [o.name for o in others if o.name not in repointed]
    # Published only once the new primary accepts writes: clients that learn of it at once
    # then write at once, instead of meeting NOREPLICAS and backing off (up to a second).
    required = replicas_required_after_promotion(ctx)
    good = await good_replicas_of(candidate, required) if repointed and required > 0 else None
    return ReplicasRepointed(replicas=repointed, lost=lost, good_replicas=good)


async def compare_and_set_loop(ctx: StepContext, change: Any, attempts: int = 10) -> Topology:
    """Apply `change(topology) -> Topology | None` with compare-and-set, retrying on conflicts
    (another shard's failover may publish in between). None means: nothing to change. The
    first round starts from the topology the step's gate read, when it read one."""
    first = ctx.store_reads.topology if ctx.store_reads is not None else None
    return await compare_and_set_loop_on(
        ctx.env.store.topology, change, ctx.assert_lock, attempts, first=first
    )


async def compare_and_set_loop_on(
    store: TopologySource,
    change: Callable[[Topology], Awaitable[Topology | None]],
    assert_lock: Callable[[], Awaitable[None]],
    attempts: int = 10,
    *,
    first: Topology | None = None,
) -> Topology:
    """`compare_and_set_loop` for any holder of the shard's lock (`assert_lock` raises once it
    is lost, before anything is stored). `first`: the topology as just read, for the first
    round (a stale one loses the compare-and-set, and the next round reads it)."""
    for _ in range(attempts):
        if first is not None:
            current, first = first, None
        else:
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


@step(
    "ratequeue.publish_topology",
    output=TopologyPublished,
    reads={
        CHOOSE_CANDIDATE: CandidateChosen,
        FENCE_OLD_PRIMARY: FenceResult,
        PROMOTE_CANDIDATE: CandidatePromoted,
    },
    inputs=ShardFailoverInputs,
)
async def publish_topology(ctx: StepContext) -> TopologyPublished:
    """Epoch + 1: the candidate is the shard's primary, the other replicas the fence parked stay
    listed (repointed or not), the old primary and any replica the fence could not reach are
    held for forensics."""
    shard_id = ctx.inputs_as(ShardFailoverInputs).shard
    choice = ctx.output_of(CHOOSE_CANDIDATE, CandidateChosen)
    parked = {r.name for r in ctx.output_of(FENCE_OLD_PRIMARY, FenceResult).reached()}
    promoted = ctx.output_of(PROMOTE_CANDIDATE, CandidatePromoted)

    async def change(topology: Topology) -> Topology | None:
        shard = topology.shard(shard_id)
        if shard.primary.name == choice.candidate:
            return None  # published by an earlier run of this step
        epoch = topology.epoch + 1
        candidate = _node_named(topology, shard_id, choice.candidate)
        if epoch != choice.epoch:  # another change came first: fence with the epoch we get
            async with connect(candidate) as conn:
                await membership.appoint_primary(
                    conn, epoch, min_replicas=replicas_required_after_promotion(ctx)
                )
        # Every replica parked by the fence stays listed, repointed or not: a repoint that timed
        # out may still land, and only a listed replica is read by the N - k + 1 rule
        # (docs/membership.md, M4); the shard keeper attaches it once it answers. A replica
        # the fence could not reach may still follow the old primary (and apply writes it never
        # acknowledged): it goes to forensics with it; once it answers again the shard keeper
        # attaches it like the old primary (a full resync replaces what it applied beyond).
        unreached = [r for r in shard.replicas if r.name not in parked]
        now = time.time()
        new_shard = shard.model_copy(
            update={
                "primary": candidate,
                "replicas": [
                    r for r in shard.replicas if r.name in parked and r.name != candidate.name
                ],
                "forensics": [
                    *shard.forensics,
                    *(HeldNode.of(node, now) for node in [shard.primary, *unreached]),
                ],
                "epoch": epoch,
                "status": "ok",
                "lineage": promoted.lineage,
                "appointed_enqueues": promoted.appointed_enqueues,
            }
        )
        return topology.next_with(new_shard)

    published = await compare_and_set_loop(ctx, change)
    shard = published.shard(shard_id)
    return TopologyPublished(
        epoch=published.epoch, primary=shard.primary.name, published_at=time.time()
    )


def replicas_wanted(asked: int | None, shard: Shard, replicas_at_fence: int) -> int:
    """How many replicas a failover brings the shard back to: what the workflow was asked for,
    else the shard's own target (recorded when it was created), else as many as it had when the
    old primary was fenced (a map written before targets were recorded). Not the count at the
    fence when a target is known: a shard already a replica short would stay short for good."""
    if asked is not None:
        return asked
    if shard.replica_target is not None:
        return shard.replica_target
    return replicas_at_fence


def replacement_name(shard_id: str, shard_epoch: int) -> str:
    """The name of the replacement a failover provisions: one per shard epoch, so a retried or
    resumed step adopts the node an earlier attempt started instead of starting a second, and
    an escalation can tell which node its workflow may have started."""
    return f"{shard_id}-replica-e{shard_epoch}"


@step(
    "ratequeue.provision_replacement",
    output=ReplacementProvisioned,
    reads={FENCE_OLD_PRIMARY: FenceResult},
    inputs=ShardFailoverInputs,
)
async def provision_replacement(ctx: StepContext) -> ReplacementProvisioned:
    """Bring the shard back to its replica count: the actuator starts a parked node, the topology
    lists it (epoch + 1; the primary's shard epoch does not change), and only then does it attach
    to the primary, so `WAIT` never counts a replica the N - k + 1 rule cannot see."""
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        return ReplacementProvisioned(skipped="no actuator configured")
    inputs = ctx.inputs_as(ShardFailoverInputs)
    shard_id = inputs.shard
    topology = await load_topology(ctx)
    shard = topology.shard(shard_id)
    fenced = ctx.output_of(FENCE_OLD_PRIMARY, FenceResult)
    target = replicas_wanted(inputs.target_replicas, shard, fenced.replica_count)
    name = replacement_name(shard_id, shard.epoch)
    listed = any(r.name == name for r in shard.replicas)
    if not listed and len(shard.replicas) >= target:
        return ReplacementProvisioned(
            skipped=f"shard has {len(shard.replicas)} replicas (target {target})"
        )
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
            needed = membership.required_replicas(inputs.min_replicas, len(listed.replicas))
            for setting, value in membership.write_quorum(needed).items():
                await primary_conn.config_set(setting, value)
    except (RedisError, OSError, TimeoutError) as error:
        await escalate_if_gone(primary, f"{node.name} was joining it", error)
        raise
    return ReplacementProvisioned(replica=node.name, address=node.peer_address)


# When a step's failure means the primary it appointed is gone: at least as strict as the
# sensor's rule for a primary being down (`detection.sensor`: 3 failed PINGs 0.25 s apart, or
# refused twice in a row), each PING on a fresh connection. A slow primary times out, and a
# connection can drop from a live one: neither is gone, and the step is retried.
GONE_PINGS = 3
GONE_PING_INTERVAL = 0.25
GONE_PING_TIMEOUT = 0.5
GONE_REFUSALS = 2
GONE_REFUSAL_INTERVAL = 0.05


async def gone(node: NodeRef) -> bool:
    """Is `node` gone: refused `GONE_REFUSALS` times in a row (its process died, its host is up),
    or no answer to `GONE_PINGS` PINGs `GONE_PING_INTERVAL` apart? At most about 2 s."""
    refusals = 0
    for attempt in range(GONE_PINGS):
        if attempt:
            await asyncio.sleep(GONE_REFUSAL_INTERVAL if refusals else GONE_PING_INTERVAL)
        probe = await probes.ping(node.peer_host or node.host, node.port, GONE_PING_TIMEOUT)
        if probe.ok:
            return False
        refusals = refusals + 1 if probe.refused else 0
        if refusals >= GONE_REFUSALS:
            return True
    return True


async def escalate_if_gone(primary: NodeRef, doing: str, error: BaseException) -> None:
    """Raise `Escalate` (no retry) if the primary this workflow appointed is `gone`; else
    return, and the step's retries go on. A second failure: this workflow's work is done or
    moot, and it must give the shard lock back at once, since the failover of the new primary
    waits for it only a few seconds (`acquire_lock`'s retries) before it escalates too."""
    if await gone(primary):
        raise Escalate(f"primary {primary.name} stopped answering while {doing}") from error


@step("ratequeue.verify_health", output=HealthVerified, inputs=ShardFailoverInputs)
async def verify_health(ctx: StepContext) -> HealthVerified:
    """The new primary answers and WAIT confirms `min_replicas` replicas."""
    inputs = ctx.inputs_as(ShardFailoverInputs)
    shard = (await load_topology(ctx)).shard(inputs.shard)
    k = inputs.min_replicas
    try:
        detached = await detach_unlisted_replicas(shard, ctx.assert_lock)
        async with connect(shard.primary, timeout=3) as conn:
            await write_once_replicas_follow(conn, deadline=time.monotonic() + 3)
            confirmed = int(await conn.execute_command("WAIT", k, 1000))
    except (RedisError, OSError, TimeoutError) as error:
        await escalate_if_gone(shard.primary, "its health was verified", error)
        raise
    if confirmed < k:
        raise RuntimeError(f"WAIT confirmed {confirmed} of {k} replicas on {shard.primary.name}")
    return HealthVerified(
        primary=shard.primary.name, replicas_confirmed=confirmed, detached=detached
    )


async def write_once_replicas_follow(conn: aioredis.Redis, deadline: float) -> None:
    """One write for `WAIT` to cover. An appointed primary refuses writes (NOREPLICAS) until
    `min_replicas` replicas follow it, which takes a moment after a repoint."""
    while True:
        try:
            await membership.bump_barrier(conn)
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
    former primary that restarts boots parked already: it is simply held (the shard keeper
    rejoins a held node by the forensics rules, `lazarus_lite.forensics`)."""
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


@step("ratequeue.hold_old_primary", output=OldPrimaryHeld, inputs=ShardFailoverInputs)
async def hold_old_primary(ctx: StepContext) -> OldPrimaryHeld:
    inputs = ctx.inputs_as(ShardFailoverInputs)
    topology = await load_topology(ctx)
    old = _node_named(topology, inputs.shard, str(inputs.failed_primary))
    state = await hold_for_forensics(old, inputs.forensics_policy)
    return OldPrimaryHeld(old_primary=old.name, state=state)


@step("ratequeue.mark_escalated", output=ShardFlagged)
async def mark_escalated(ctx: StepContext) -> ShardFlagged:
    """On failure: leave the shard as it is (one primary per epoch holds at every step), flag it
    for a person, and give the lock back."""
    # Read untyped on purpose: it runs whatever went wrong, bad inputs included.
    shard_id = ctx.workflow.inputs["shard"]
    held = ctx.held_lock()
    if held is None or not await ctx.env.locks.renew(held):
        # Not this workflow's shard to flag: it never took the lock, or lost it to another.
        return ShardFlagged(shard=shard_id, status="unchanged: this workflow did not hold the lock")

    async def change(topology: Topology) -> Topology | None:
        shard = topology.shard(shard_id)
        if shard.status == "escalated":
            return None
        new_shard = shard.model_copy(update={"status": "escalated"})
        return topology.next_with(new_shard)

    with contextlib.suppress(Exception):
        await compare_and_set_loop(ctx, change, attempts=3)
    unlisted: str | None = None
    with contextlib.suppress(Exception):  # the store away: nothing proves the node unlisted
        unlisted = await unlisted_replacement(ctx, shard_id)
    await ctx.env.locks.release(held)
    replacement = await remove_replacement(ctx, unlisted) if unlisted else None
    return ShardFlagged(shard=shard_id, status="escalated", replacement=replacement)


def _step_running(ctx: StepContext, run: str) -> str | None:
    """The name of this workflow's step that runs `run`, if it has one."""
    return next((s.name for s in ctx.workflow.definition.steps if s.run == run), None)


async def unlisted_replacement(ctx: StepContext, shard_id: str) -> str | None:
    """The replacement this escalating workflow may have started and no topology lists, if
    any; read while the workflow still holds the shard's lock (call it only then).

    Only a node listed nowhere is given back: a listed replica may already count for `WAIT`
    (the primary counts whatever follows it), so a later failover may need it, and unlisting
    it is a person's call on an escalated shard. The name is the one `provision_replacement`
    used: this shard's epoch, which only the lock's holder changes, as long as the primary is
    still the one this workflow published."""
    provision = _step_running(ctx, "ratequeue.provision_replacement")
    publish = _step_running(ctx, "ratequeue.publish_topology")
    if provision is None or publish is None or not ctx.workflow.steps[provision].attempts:
        return None  # the workflow failed before anything was provisioned
    published = ctx.workflow.steps[publish]
    topology = await load_topology(ctx)
    shard = topology.shard(shard_id)
    if published.status != "succeeded" or shard.primary.name != published.output.get("primary"):
        return None  # not the epoch this workflow published: no name to trust
    name = replacement_name(shard_id, shard.epoch)
    listed = {
        node.name
        for each in topology.shards
        for node in [each.primary, *each.replicas, *each.forensics]
    }
    return None if name in listed else name


async def remove_replacement(ctx: StepContext, name: str) -> str:
    """Have the actuator remove what it started under `name` (idempotent: nothing started is
    nothing removed); says what happened. Outside the lock: the node is listed nowhere, and
    only a workflow of this shard epoch would list a node of that name."""
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        return f"{name}: no actuator to remove it"
    try:
        removed = await asyncio.to_thread(actuator.remove, name)
    except Exception as error:  # an engine away: the node stays parked, listed nowhere
        return f"{name}: listed nowhere, removing it failed: {error}"
    if removed:
        return f"removed {', '.join(removed)}: started by this workflow, listed nowhere"
    return f"{name}: nothing started under that name"
