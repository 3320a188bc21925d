"""Shard membership: how a node becomes a shard's primary or a member replica, how it is parked,
and which replica holds every acknowledged write.

These are the moves that keep the zero-loss argument true (`docs/membership.md`):
- every shard node boots *parked*: a replica of a sink where nothing listens, and configured to
  refuse writes even if someone makes it a primary by hand; no node boots writable;
- a node becomes a primary only by `appoint_primary`, which records its fence epoch and the
  lineage of its replication stream;
- a replica is `attach`ed to a primary only once the topology lists it as a member, so `WAIT`
  never counts a node that the N - k + 1 rule does not read;
- `most_complete_replica` applies that rule on the lineage the topology recorded.

Not for: deciding when to fail over or rejoin (lazarus_lite does), starting processes
(`local_cluster` does), or routing (the client does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ratequeue.errors import NoSafeCandidate
from ratequeue.topology import FENCE_KEY, Lineage, NodeRef

# Every enqueue call (one message, or a whole group commit or batch) and rate change increments
# it (`ratequeue.scripts`): how many writes acknowledged after `WAIT` a node has applied.
BARRIER_KEY = "rq:barrier"

# The failover's own writes (the fence, the barrier a health check waits on) go through these
# scripts: flagged `allow-oom` (Redis 7 shebang), Redis runs them on a node over its maxmemory,
# which a promoted replica of a full shard is, where a plain SET or INCR is refused (OOM).
FENCE_WRITE = "#!lua flags=allow-oom\nreturn redis.call('SET', KEYS[1], ARGV[1])"
BARRIER_WRITE = "#!lua flags=allow-oom\nreturn redis.call('INCR', KEYS[1])"

# Where a parked node points: nothing listens on port 1, so it replicates from nobody, keeps its
# data, offset and replication id, and refuses writes (a replica is read-only).
FENCE_SINK = ("127.0.0.1", 1)
# `min-replicas-to-write` of a node no controller has appointed: more replicas than any shard
# has, so even a node made primary by hand (`REPLICAOF NO ONE`) refuses every write.
NEVER_WRITABLE = 1_000_000
NO_REPLICATION_ID = "0" * 40
# What redis-server takes as `maxmemory`.
MEMORY_SIZE = re.compile(r"[1-9][0-9]{0,15}(?:[kmg]b?)?", re.IGNORECASE)
# How long an appointed primary goes on accepting writes after the last acknowledgement from its
# k-th replica. Past it the primary refuses every write, dequeues included: a primary cut off
# from its replicas (the shard failed over behind it) stops leasing messages to stale clients
# within this plus up to two seconds (Redis counts the lag in whole seconds from acks that come
# each second, and refreshes its count of good replicas once a second).
REPLICA_MAX_LAG_SECONDS = 2


def required_replicas(min_replicas: int, listed: int) -> int:
    """How many replicas an appointed primary needs to accept writes: what `WAIT` requires, but
    never more than the shard lists. A shard left with fewer replicas (its last failover, no
    replacement yet) keeps delivering what it holds, though it can acknowledge no enqueue; the
    shard keeper raises the bar again as replicas are listed (`write_quorum` of this)."""
    return min(min_replicas, listed)


def write_quorum(min_replicas: int) -> dict[str, int]:
    """The settings of an appointed primary: it accepts writes only while `min_replicas` replicas
    (what `WAIT` requires) acknowledged it within `REPLICA_MAX_LAG_SECONDS`."""
    return {
        "min-replicas-to-write": min_replicas,
        "min-replicas-max-lag": REPLICA_MAX_LAG_SECONDS,
    }


def boot_arguments(maxmemory: str | None = None) -> list[str]:
    """The redis-server flags every shard node starts with (processes, containers, compose);
    `maxmemory` (bytes, or with a unit: `512mb`, `2gb`) caps the memory of the node's data set.

    Raises ValueError naming `maxmemory` if it is not such a size."""
    host, port = FENCE_SINK
    # A primary with no replica for `repl-backlog-ttl` frees its backlog and later starts a new
    # replication id, which would orphan the lineage the topology recorded: never free it.
    arguments = ["--replicaof", host, str(port), "--min-replicas-to-write", str(NEVER_WRITABLE),
                 "--repl-backlog-ttl", "0",
                 # At its maxmemory a node refuses writes: it never evicts a queued message.
                 "--maxmemory-policy", "noeviction"]  # fmt: skip
    if maxmemory is not None:
        if not MEMORY_SIZE.fullmatch(maxmemory):
            raise ValueError(
                f"maxmemory {maxmemory!r}: expected a size in bytes, or with a unit (kb, mb, gb)"
            )
        arguments += ["--maxmemory", maxmemory]
    return arguments


def memory_limit(arguments: Iterable[str]) -> str | None:
    """The `--maxmemory` among a node's boot arguments, if any."""
    listed = list(arguments)
    return listed[listed.index("--maxmemory") + 1] if "--maxmemory" in listed else None


def points_at(info: dict[str, Any], host: str, port: int) -> bool:
    """Does `INFO replication` say this node follows host:port?"""
    return str(info.get("master_host")) == host and int(info.get("master_port", 0)) == port


def is_parked(info: dict[str, Any]) -> bool:
    return info.get("role") == "slave" and points_at(info, *FENCE_SINK)


@dataclass(frozen=True)
class ReplicaPosition:
    """Where a replica stands, read fresh: its replication stream and offset (`INFO
    replication`), and how many enqueues it has applied (the `rq:barrier` counter every enqueue
    increments; it survives a restart with the data, where a replication id does not)."""

    name: str
    replid: str
    offset: int
    enqueues: int | None = None  # None: not read


def position_of(name: str, info: dict[str, Any], *, enqueues: int | None = None) -> ReplicaPosition:
    """A replica's (or a demoted primary's) replication id and offset. `slave_repl_offset`, not
    `ROLE`: ROLE reports -1 once the link to the primary is down."""
    if info.get("role") == "slave":
        return ReplicaPosition(
            name, str(info.get("master_replid", "")), int(info.get("slave_repl_offset", -1)),
            enqueues,
        )  # fmt: skip
    replid2 = str(info.get("master_replid2") or NO_REPLICATION_ID)
    replid = replid2 if replid2 != NO_REPLICATION_ID else str(info.get("master_replid", ""))
    return ReplicaPosition(name, replid, int(info.get("master_repl_offset", -1)), enqueues)


async def enqueues_applied(node: aioredis.Redis) -> int:
    """How many enqueues (and rate changes: every write acknowledged after `WAIT`) `node` has
    applied; 0 for a node that never synced."""
    return int(await node.get(BARRIER_KEY) or 0)


def lineage_of(info: dict[str, Any]) -> Lineage:
    """The lineage of a node that is now a primary: its stream, and the stream it continued
    from up to the offset where it was appointed (`second_repl_offset` is that offset + 1)."""
    previous = str(info.get("master_replid2") or NO_REPLICATION_ID)
    second = int(info.get("second_repl_offset", -1))
    return Lineage(
        replid=str(info["master_replid"]),
        since=max(0, second - 1) if second > 0 else 0,
        previous=None if previous == NO_REPLICATION_ID else previous,
    )


def on_lineage(position: ReplicaPosition, lineage: Lineage) -> bool:
    """Is this position a point in the lineage's stream (its own, or the prefix it continued)?"""
    if position.replid == lineage.replid:
        return True
    return position.replid == lineage.previous and 0 <= position.offset <= lineage.since


def most_complete_replica(
    positions: list[ReplicaPosition],
    lineage: Lineage | None,
    *,
    listed: int,
    min_replicas: int,
    appointed_enqueues: int | None = None,
) -> tuple[ReplicaPosition, dict[str, str]]:
    """The replica to promote, and the replicas left out of the comparison with why.

    Every write acknowledged by the current primary is on `min_replicas` (k) of its `listed`
    (N) members, so fresh positions from N - k + 1 members include one that holds it.

    By replication offset first: a position counts if it is on the primary's lineage (the
    primary's own stream, or the stream it continued from at or below the offset where it was
    appointed: a member that has not resynced yet holds a prefix, and nothing the primary
    acknowledged since). The chosen replica must also reach the appointment offset, or writes
    acknowledged before the primary was appointed may be on the primary alone.

    A node that restarted, or a replacement that never synced, reports a replication id of its
    own, so its offset says nothing; its data still does. When offsets cannot decide because of
    such nodes, every position is compared by enqueues applied (a prefix count of the one stream
    all listed members follow), provided the topology recorded how many the primary had applied
    when it was appointed: the chosen replica must have applied at least that many.
    """
    try:
        return _by_offset(positions, lineage, listed=listed, min_replicas=min_replicas)
    except _NotComparable as refusal:
        if appointed_enqueues is None or any(p.enqueues is None for p in positions):
            raise NoSafeCandidate(str(refusal)) from None
        return _by_enqueues(positions, lineage, appointed_enqueues, listed=listed,
                            min_replicas=min_replicas, left_out=refusal.left_out)  # fmt: skip


class _NotComparable(NoSafeCandidate):
    def __init__(self, message: str, left_out: dict[str, str]) -> None:
        super().__init__(message)
        self.left_out = left_out


def _needed(listed: int, min_replicas: int) -> int:
    return max(1, listed - min_replicas + 1)


def _by_offset(
    positions: list[ReplicaPosition], lineage: Lineage | None, *, listed: int, min_replicas: int
) -> tuple[ReplicaPosition, dict[str, str]]:
    needed = _needed(listed, min_replicas)
    ignored: dict[str, str] = {}
    if lineage is None:
        # Not recorded (yet): offsets are comparable only within one history.
        counted = list(positions)
        histories = sorted({p.replid for p in positions})
        if len(histories) > 1:
            for p in positions:
                ignored[p.name] = f"replication id {p.replid[:8]}… (no lineage recorded)"
            raise _NotComparable(
                f"replicas follow different replication histories: {histories}", ignored
            )
    else:
        counted = []
        for position in positions:
            if on_lineage(position, lineage):
                counted.append(position)
            else:
                ignored[position.name] = (
                    f"replication id {position.replid[:8]}… at offset {position.offset} is not "
                    f"on the primary's lineage ({lineage.replid[:8]}…): restarted, or diverged"
                )
    if len(counted) < needed:
        left_out = "; ".join(f"{name}: {why}" for name, why in sorted(ignored.items()))
        message = (
            f"{len(counted)} of {listed} listed replicas report a comparable position; {needed} "
            f"are needed to be sure one holds every write acknowledged at {min_replicas}"
            + (f" ({left_out})" if left_out else "")
        )
        if ignored:
            raise _NotComparable(message, ignored)
        raise NoSafeCandidate(message)
    best = max(counted, key=lambda p: (p.offset, p.name))
    if lineage is not None and best.offset < lineage.since:
        raise NoSafeCandidate(
            f"the most complete replica, {best.name}, is at offset {best.offset}, below "
            f"{lineage.since} where the primary was appointed: writes acknowledged before then "
            "may be on the primary alone (bring it back and it is re-appointed)"
        )
    return best, ignored


def _by_enqueues(
    positions: list[ReplicaPosition],
    lineage: Lineage | None,
    appointed_enqueues: int,
    *,
    listed: int,
    min_replicas: int,
    left_out: dict[str, str],
) -> tuple[ReplicaPosition, dict[str, str]]:
    needed = _needed(listed, min_replicas)
    diverged = {
        p.name
        for p in positions
        if lineage is not None and p.replid == lineage.previous and p.offset > lineage.since
    }
    positions = [p for p in positions if p.name not in diverged]  # applied what was never acked
    if len(positions) < needed:
        raise NoSafeCandidate(
            f"{len(positions)} of {listed} listed replicas answer with comparable counts; "
            f"{needed} are needed"
            + (f" (diverged: {', '.join(sorted(diverged))})" if diverged else "")
        )

    # Equal counts: a position on the lineage, then the higher offset there, holds the later
    # writes that the count does not see (dequeues, acks).
    def rank(p: ReplicaPosition) -> tuple[int, bool, int, str]:
        on = lineage is not None and on_lineage(p, lineage)
        return (p.enqueues or 0, on, p.offset if on else -1, p.name)

    best = max(positions, key=rank)
    if (best.enqueues or 0) < appointed_enqueues:
        raise NoSafeCandidate(
            f"the most complete replica, {best.name}, applied {best.enqueues} enqueues, fewer "
            f"than the {appointed_enqueues} the primary held when it was appointed: writes "
            "acknowledged before then may be on the primary alone"
        )
    compared = {name: f"{why}; compared by enqueues applied" for name, why in left_out.items()}
    return best, compared


def settled_lineage(info: dict[str, Any]) -> Lineage | None:
    """The lineage of a primary, or None while it has no replication backlog: Redis starts a new
    replication id (and forgets the previous one) when the first replica of such a primary
    syncs, so its id is not final until then. A promoted replica has a backlog already."""
    if not int(info.get("repl_backlog_active", 0)):
        return None
    return lineage_of(info)


async def appoint_primary(node: aioredis.Redis, epoch: int, *, min_replicas: int) -> Lineage | None:
    """Make `node` the primary of a shard epoch: stop replicating, write the fence, then accept
    writes while `min_replicas` replicas follow it (`write_quorum`). Idempotent. Returns the
    lineage to record in the topology (None: record it once a replica has synced, see
    `settled_lineage`)."""
    info = await node.info("replication")
    if info.get("role") != "master":
        await node.execute_command("REPLICAOF", "NO", "ONE")
        info = await node.info("replication")
    # The fence is written before any replica follows: for that one write, ask for none.
    await node.config_set("min-replicas-to-write", 0)
    await node.eval(FENCE_WRITE, 1, FENCE_KEY, str(epoch))
    for name, value in write_quorum(min_replicas).items():
        await node.config_set(name, value)
    return settled_lineage(info)


async def attach(node: aioredis.Redis, primary: NodeRef) -> None:
    """Make a listed member follow `primary` (at its peer address). Idempotent.

    Call only once the topology lists the node as a replica of the primary's shard."""
    host = primary.peer_host or primary.host
    if not points_at(await node.info("replication"), host, primary.port):
        await node.execute_command("REPLICAOF", host, str(primary.port))


async def park(node: aioredis.Redis, *, drop_fence: bool = False) -> dict[str, Any]:
    """Point `node` at the sink and make it refuse writes again; returns its replication info
    (its position is frozen from here on). `drop_fence` deletes a primary's fence first, so a
    node demoted from primary can never pass a fence check again, even if made writable by hand."""
    info = await node.info("replication")
    if info.get("role") == "master" and drop_fence:
        # Deleting the fence is a write, which a primary cut off from its replicas refuses
        # (`write_quorum`): lift the quorum for that one command, in one round trip. A write
        # of another client slipping in between can be no enqueue acknowledged (WAIT has no
        # replica to count), at worst a lease delivered twice.
        async with node.pipeline(transaction=False) as pipe:
            pipe.config_set("min-replicas-to-write", 0)
            pipe.delete(FENCE_KEY)
            pipe.config_set("min-replicas-to-write", NEVER_WRITABLE)
            await pipe.execute()
    await node.config_set("min-replicas-to-write", NEVER_WRITABLE)
    if not points_at(info, *FENCE_SINK):
        await node.execute_command("REPLICAOF", *FENCE_SINK)
        info = await node.info("replication")
    return info


async def empty_parked(node: aioredis.Redis) -> None:
    """Empty a parked node and give it a replication history of its own, so it reads exactly
    like a replacement that never synced. For a former member about to be listed again: until
    its full resync it may be fenced and compared with the listed replicas, and what it applied
    beyond the acknowledged stream (its enqueue count, or an offset on the lineage's previous
    stream that holds nothing) must never make it the candidate. Refuses a node not parked."""
    if not is_parked(await node.info("replication")):
        raise RuntimeError("only a parked node is emptied")
    # A parked node is a read-only replica: lift that for the one command, in one round trip.
    async with node.pipeline(transaction=False) as pipe:
        pipe.config_set("replica-read-only", "no")
        pipe.flushall()
        pipe.config_set("replica-read-only", "yes")
        await pipe.execute()
    # A primary for an instant (it refuses writes: `NEVER_WRITABLE`), so Redis starts a new
    # replication id; parked again, it keeps that id: no offset of it is on any lineage.
    await node.config_set("min-replicas-to-write", NEVER_WRITABLE)
    await node.execute_command("REPLICAOF", "NO", "ONE")
    await node.execute_command("REPLICAOF", *FENCE_SINK)


async def wait_in_sync(primary: aioredis.Redis, replica: aioredis.Redis, timeout: float) -> None:
    """Return once `replica`'s link is up and it has reached the primary's offset as of the
    moment the link came up (so it holds everything acknowledged before it joined)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    target: int | None = None
    while True:
        await primary.ping()  # a primary that died meanwhile ends the wait at once
        info = await replica.info("replication")
        if info.get("master_link_status") == "up":
            if target is None:
                target = int((await primary.info("replication"))["master_repl_offset"])
            if int(info.get("slave_repl_offset", -1)) >= target:
                return
        if loop.time() > deadline:
            raise TimeoutError(
                f"replica not in sync after {timeout:g} s (link {info.get('master_link_status')})"
            )
        await asyncio.sleep(0.05)


async def writable_with(primary: aioredis.Redis, required: int, timeout: float) -> int:
    """Wait until the appointed `primary` counts `required` good replicas (its write quorum,
    `min-replicas-to-write`, accepts writes), at most `timeout` seconds; returns how many it
    counts. Redis' own `WAIT` ends the wait as soon as the replicas are online (a repointed
    replica's partial resync takes a few milliseconds; a client writing meanwhile gets
    `NOREPLICAS` and backs off for far longer). A shard short of replicas returns after
    `timeout` with fewer: the caller goes on, it only saved its clients a refusal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left_ms = max(1, int((deadline - loop.time()) * 1000))
        acknowledged = int(await primary.execute_command("WAIT", required, left_ms))
        # Redis leaves the good-replica count out of INFO when no write quorum is set
        # (min-replicas-to-write 0): then the replicas WAIT counted are the answer.
        info = await primary.info("replication")
        good = int(info.get("min_slaves_good_slaves", acknowledged))
        if good >= required or loop.time() >= deadline:
            return good
        # WAIT counted a replica Redis has not yet counted as good (its count refreshes on its
        # own tick): look again shortly.
        await asyncio.sleep(0.005)


async def bump_barrier(node: aioredis.Redis) -> int:
    """One write on the shard's primary for `WAIT` to cover, taken also when it is full."""
    return int(await node.eval(BARRIER_WRITE, 1, BARRIER_KEY))
