"""The shard keeper: puts nodes that came back where the topology says they belong.

Every shard node boots parked (`ratequeue.membership`): after a restart it follows nobody and
refuses writes until somebody puts it back. Each controller node runs the keeper every
`forensics_interval` seconds:
- a node attached to a primary but not listed as its replica is parked (`WAIT` counts it);
- a listed replica that answers but does not follow its shard's primary (it restarted, or an
  interrupted workflow left it parked) is attached to the primary again;
- a listed primary that answers parked (it restarted before anyone failed it over, or its
  failover escalated because no replica held what it held) is appointed again in a new shard
  epoch, and its replicas follow it; a process that restarts keeps what it wrote (its AOF is
  written before a reply or a replication byte leaves it);
- a primary whose lineage is not recorded yet (a new primary's replication id is final only
  once its first replica synced) gets it recorded;
- former members held for forensics get the forensics policy (`steps.ratequeue_promotion`):
  one that answers is parked (or, with policy `stop`, shut down and never rejoined);
- a former member that answers parked rejoins (`lazarus_lite.forensics` holds the rules), one
  per pass: once its hold time is over, its data files are copied (when a copy directory is
  set; outside the lock, as nothing can write to a parked node listed nowhere); then, if the
  shard is below its replica target (`Shard.replica_target`), it is emptied with a replication
  id of its own (`membership.empty_parked`: until its full resync a failover reads it as a
  replacement that never synced, never by what it applied unacknowledged), one topology
  compare-and-set lists it as a replica and takes it off the forensics list, and only then is it
  pointed at the primary (a full resync, not waited for, replaces whatever it applied that was
  never acknowledged). A shard at its target (a replacement took its place) releases it
  instead: dropped from the list, parked, and removed if the actuator started it. A node still
  dead stays held;
- the forensics list is kept within its bound (a count and an age), and so are the copies.

Before each change the keeper consults its gates (`gates.KeeperGates`): while the kill switch
(`failover` or `all`) or shadow mode for the shard's service is on, or this node is outside the
control realm, it changes nothing on Redis, in the topology or in the forensics copies; it says
what it would have done instead (a log line and `lazarus_shard_keeper_withheld`, once while it
stays withheld; in shadow mode also a shadow decision, as for a workflow), and acts on the first
pass after the gate is released. The changes it makes have no event, hence no audit record: each
is a log line and counts in `lazarus_shard_keeper_changes`.

Every change is made under the shard's lock, the one a failover workflow holds, so the keeper
and a failover never interleave; the lock is held only for short steps (reads, compare-and-sets,
`REPLICAOF`), never for a copy or a resync, so a failover waiting on it is delayed, not refused.
A shard whose lock is busy is left alone this round.
Not for: failing over (the failover workflow) or provisioning replicas (the actuator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lazarus_lite.actuators import Actuator, DataCopier
from lazarus_lite.coordination.interface import CoordinationStore, RecordLog
from lazarus_lite.errors import ForensicsCopyFailed, LockBusy
from lazarus_lite.forensics import (
    ForensicsRules,
    bounded,
    copies_beyond_bound,
    copy_data_files,
    discard_copy,
    prune_copies,
)
from lazarus_lite.gates import GateStop, KeeperGates
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.shadow_report import remember_keeper_shadow_decision
from lazarus_lite.steps.ratequeue_promotion import (
    compare_and_set_loop_on,
    connect,
    detach_unlisted_replicas,
    hold_for_forensics,
    unlisted_replicas,
)
from ratequeue import membership
from ratequeue.topology import FENCE_KEY, HeldNode, NodeRef, Shard, Topology

log = logging.getLogger(__name__)

# The service name the sensors report shards under: the failover rule locks `service/shard`.
RATEQUEUE_SERVICE = "ratequeue"


async def _replication(node: NodeRef) -> dict[str, Any] | None:
    try:
        async with connect(node, timeout=0.5) as conn:
            return dict(await conn.info("replication"))
    except (RedisError, OSError):
        return None


def _still_holds(shard: Shard, primary: NodeRef, node: HeldNode) -> bool:
    """Does `shard`, as stored now, still have `primary` and hold `node` for forensics?"""
    return shard.primary.name == primary.name and node.name in {n.name for n in shard.forensics}


class NotDone(str):
    """A line of the keeper's saying a change it tried was not made (the node answered but
    stays held, removing it failed...): logged like the others, not counted as a change."""


class ShardKeeper:
    def __init__(
        self,
        store: CoordinationStore,
        node_id: str,
        forensics_policy: str,
        min_replicas: int = 1,
        *,
        forensics: ForensicsRules | None = None,
        actuator: Actuator | None = None,
        gates: KeeperGates | None = None,
        records: RecordLog | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.topology = store.topology
        self.locks = store.locks
        self.node_id = node_id
        self.holder = f"shard-keeper:{node_id}"
        self.forensics_policy = forensics_policy
        self.min_replicas = min_replicas  # what the API's WAIT requires
        self.forensics = forensics or ForensicsRules()
        self.actuator = actuator  # removes a released node it started (None: left parked)
        # Never ungated: without the controller's gates, the store's kill switch and shadow mode.
        self.gates = gates or KeeperGates(store.flags)
        self.records = records or store.records  # where shadow mode's would-haves go
        self.metrics = metrics
        # The would-haves reported already (shard, what, gate): reported once while they stay
        # withheld, not every few seconds; again if they come back after being done or gone.
        self._withheld: set[tuple[str, str, str]] = set()
        self._withheld_now: set[tuple[str, str, str]] = set()

    async def run_once(self) -> list[str]:
        """One pass over every shard; returns what was done, one line per change, and what a
        gate withheld, one line per change it would have made (the first pass it is withheld)."""
        topology = await self.topology.load()
        done: list[str] = []
        self._withheld_now = set()
        for shard in topology.shards if topology else []:
            try:  # one shard's trouble must not leave the others unkept this pass
                done += await self.keep(shard)
            except Exception as error:
                done.append(f"{shard.id}: keeping it failed: {error}")
        self._withheld = self._withheld_now
        return done

    async def keep(self, shard: Shard) -> list[str]:
        done = []
        returned = []
        for node in shard.forensics:
            back, lines = await self._hold(shard, node)
            done += lines
            if back:
                returned.append(node)
        if self.forensics.copy_dir is not None and (
            beyond := copies_beyond_bound(
                self.forensics.copy_dir, shard.id, self.forensics, time.time()
            )
        ):
            names = ", ".join(path.name for path in beyond)
            done += await self._act(
                shard, "prune_copies", f"remove forensics copies {names}, beyond the bound",
                lambda: self._prune_copies(shard.id),
            )  # fmt: skip
        primary = await _replication(shard.primary)
        if primary is None:
            return done  # down, paused or cut off: the sensors and the failover handle it
        infos = await asyncio.gather(*(_replication(r) for r in shard.replicas))
        host, port = shard.primary.peer_host or shard.primary.host, shard.primary.port
        strays = [
            replica
            for replica, info in zip(shard.replicas, infos, strict=True)
            if info is not None and not membership.points_at(info, host, port)
        ]
        name = shard.primary.name
        if membership.is_parked(primary):
            return done + await self._act(
                shard, "reappoint",
                f"appoint {name}, listed primary answering parked, again in a new epoch (or "
                "flag the shard if it holds less than a replica)",
                lambda: self._under_lock(shard, self._reappoint),
            )  # fmt: skip
        if primary.get("role") == "master" and (unlisted := unlisted_replicas(shard, primary)):
            addresses = ", ".join(f"{ip}:{port}" for ip, port in unlisted)
            done += await self._act(
                shard, "park_strays", f"park {addresses}, attached to {name} but not listed",
                lambda: self._under_lock(shard, self._park_strays),
            )  # fmt: skip
        if primary.get("role") == "master" and strays:
            names = ", ".join(replica.name for replica in strays)
            done += await self._act(
                shard, "rejoin", f"attach listed replica {names} to {name}",
                lambda: self._under_lock(shard, self._rejoin),
            )  # fmt: skip
        settled = membership.settled_lineage(primary)
        if primary.get("role") == "master" and shard.lineage is None and settled is not None:
            done += await self._act(
                shard, "record_lineage", f"record the lineage of {name}",
                lambda: self._under_lock(shard, self._record_lineage),
            )  # fmt: skip
        if primary.get("role") == "master" and await self._write_quorum_off(shard):
            done += await self._act(
                shard, "write_quorum",
                f"have {name} accept writes with {self._needed(shard)} replicas",
                lambda: self._under_lock(shard, self._set_write_quorum),
            )  # fmt: skip
        if primary.get("role") == "master" and (ready := self._hold_over(returned)):
            names = ", ".join(node.name for node in ready)
            done += await self._act(
                shard, "settle_returning",
                f"rejoin or release former member {names}, its hold over",
                lambda: self._settle_returning(shard, ready),
            )  # fmt: skip
        if primary.get("role") == "master" and (
            (kept := bounded(shard.forensics, self.forensics, time.time())) != shard.forensics
        ):
            names = ", ".join(sorted({n.name for n in shard.forensics} - {n.name for n in kept}))
            done += await self._act(
                shard, "bound_forensics",
                f"date the forensics list or drop {names or 'nobody'} from it, beyond the bound",
                lambda: self._under_lock(shard, self._bound_forensics),
            )  # fmt: skip
        return done

    async def _act(
        self,
        shard: Shard,
        action: str,
        would: str,
        change: Callable[[], Awaitable[list[str]]],
    ) -> list[str]:
        """Make one change (`change`, named `action`), unless a gate stops the keeper for the
        shard's service: then say what it would have done (`would`) instead. The gates are read
        right before each change, as the workflow engine reads them before each step, so a
        switch engaged mid-pass stops the rest of the pass."""
        stop = await self.gates.check(RATEQUEUE_SERVICE)
        if stop is not None:
            return await self._withhold(shard, action, would, stop)
        done = await change()
        made = [line for line in done if not isinstance(line, NotDone)]
        if made and self.metrics is not None:
            self.metrics.keeper_changes.labels(action).inc(len(made))
        return done

    async def _withhold(self, shard: Shard, action: str, would: str, stop: GateStop) -> list[str]:
        """Report a change `stop` withheld: once while it stays withheld (the keeper runs every
        few seconds), through the log line returned, the metric and, in shadow mode, a shadow
        decision beside the workflows' (`lazarus shadow-report`)."""
        key = (shard.id, would, stop.gate)
        if key in self._withheld:
            self._withheld_now.add(key)
            return []
        if stop.gate == "shadow":
            await remember_keeper_shadow_decision(
                self.records, RATEQUEUE_SERVICE, shard, f"shard keeper: {would}", self.node_id
            )
        self._withheld_now.add(key)  # only once reported: a failed record is tried again
        if self.metrics is not None:
            self.metrics.keeper_withheld.labels(action, stop.gate).inc()
        return [f"{shard.id}: would {would}; not done: {stop.reason}"]

    async def _hold(self, shard: Shard, node: HeldNode) -> tuple[bool, list[str]]:
        """Apply the forensics policy to the held `node` if it answers; returns whether it is
        back (parked, for `_settle_returning`) and what was done or withheld."""
        info = await _replication(node)
        if info is None:
            return False, []  # still dead (or cut off): nothing to do
        if self.forensics_policy != "stop" and membership.is_parked(info):
            return True, []  # parked already (a restart boots parked): simply held
        states: list[str] = []

        async def hold() -> list[str]:
            state = await hold_for_forensics(node, self.forensics_policy)
            states.append(state)
            changed = state in {"demoted", "stopped"}
            return [f"former primary {node.name} {state}"] if changed else []

        verb = "shut down" if self.forensics_policy == "stop" else "park"
        done = await self._act(
            shard, "hold_forensics", f"{verb} former member {node.name}, answering again", hold
        )
        return bool(states) and states[0] in {"demoted", "held"}, done

    async def _prune_copies(self, shard_id: str) -> list[str]:
        if self.forensics.copy_dir is None:
            return []
        removed = prune_copies(self.forensics.copy_dir, shard_id, self.forensics, time.time())
        return [
            f"{shard_id}: removed forensics copy {path.name}, beyond the bound" for path in removed
        ]

    def _hold_over(self, returned: list[HeldNode]) -> list[HeldNode]:
        """The returning nodes whose hold is over (none if returning nodes do not rejoin)."""
        if not self.forensics.rejoin or self.forensics_policy != "demote":
            return []
        now = time.time()
        return [
            node
            for node in returned
            if node.held_at is not None and now - node.held_at >= self.forensics.hold_seconds
        ]

    async def _settle_returning(self, shard: Shard, ready: list[HeldNode]) -> list[str]:
        """Take the first of the `ready` returning nodes that answers parked (one per pass, so
        each lock is short), copy what it holds (when the rules say so), then, under the shard's
        lock, rejoin it if the shard is below its replica target, else release it.

        The copy runs outside the lock (a `BGSAVE` takes up to 30 s; a failover gives up on the
        lock after about 6 s): nothing writes to the node meanwhile, it is parked (a read-only
        replica of a sink that refuses writes even if promoted) and listed nowhere a failover,
        the API or `attach` would reach it."""
        if not await self._appointed(shard):
            return []  # nothing to follow yet, and nothing to decide against
        for node in ready:
            info = await _replication(node)
            if info is not None and membership.is_parked(info):
                break
        else:
            return []  # still dead, or not parked yet: never attach what may be writable
        done: list[str] = []
        copy: Path | None = None
        if self.forensics.copy_dir is not None:
            try:
                copier = self.actuator if isinstance(self.actuator, DataCopier) else None
                copy = await copy_data_files(node, shard.id, self.forensics.copy_dir, copier=copier)
            except ForensicsCopyFailed as error:
                return [NotDone(f"{shard.id}: {node.name} answers but stays held: {error}")]
            done.append(f"{shard.id}: copied the data files of {node.name} to {copy}")
            done += await self._prune_copies(shard.id)
        released: list[HeldNode] = []
        decided: list[HeldNode] = []

        async def settle(current: Shard, held: Any) -> list[str]:
            if node.name not in {n.name for n in current.forensics}:
                return []  # another keeper took it first
            if await self.gates.check(RATEQUEUE_SERVICE) is not None:
                # Engaged during the copy (a BGSAVE takes up to 30 s): the node is neither
                # emptied nor listed; the next pass reports what is withheld.
                return []
            decided.append(node)
            if current.replica_target is not None and (
                len(current.replicas) >= current.replica_target
            ):
                released.append(node)
                return await self._release(current, node, held)
            return await self._list_returning(current, node, held)

        done += await self._under_lock(shard, settle)
        if copy is not None and not decided:
            # Lock busy, primary changed, or taken by another keeper: the node is copied again
            # on the pass that settles it; one copy per return keeps the others within the bound.
            discard_copy(copy)
            done.append(f"{shard.id}: {node.name} not settled this pass; its copy {copy} removed")
        if released and self.actuator is not None:
            # Outside the lock: removing a container takes the engine seconds.
            done += await self._remove_released(shard, node)
        elif released:
            done.append(f"{shard.id}: {node.name} stays parked (no actuator to remove it)")
        return done

    async def _appointed(self, shard: Shard) -> bool:
        """Is the listed primary the appointed one of the shard's epoch?"""
        try:
            async with connect(shard.primary) as conn:
                info = await conn.info("replication")
                fence = await conn.get(FENCE_KEY)
        except (RedisError, OSError):
            return False
        return info.get("role") == "master" and fence is not None and int(fence) == shard.epoch

    async def _list_returning(self, shard: Shard, node: HeldNode, held: Any) -> list[str]:
        """Empty the parked `node`, list it as a replica and take it off the forensics list in
        one compare-and-set, then point it at the primary. Its full resync is not waited for:
        listed with a replication id of its own (`membership.empty_parked`), a failover reads
        it as a replacement that never synced, and `_rejoin` attaches it again next pass if the
        link did not hold."""
        if not await self._appointed(shard):
            return []
        await self.locks.assert_held(held)
        try:
            async with connect(node) as conn:
                await membership.empty_parked(conn)
        except (RedisError, OSError, RuntimeError) as error:
            return [NotDone(f"{shard.id}: {node.name} answers but stays held: {error}")]

        async def change(topology: Topology) -> Topology | None:
            current = topology.shard(shard.id)
            if not _still_holds(current, shard.primary, node):
                return None
            updated = current.model_copy(
                update={
                    "replicas": [*current.replicas, node.node()],
                    "forensics": [n for n in current.forensics if n.name != node.name],
                }
            )
            return topology.next_with(updated)

        published = await compare_and_set_loop_on(
            self.topology, change, lambda: self.locks.assert_held(held)
        )
        if node.name not in {r.name for r in published.shard(shard.id).replicas}:
            return []
        await self.locks.assert_held(held)
        try:
            async with connect(node) as replica:
                await membership.attach(replica, shard.primary)
        except (RedisError, OSError) as error:
            return [NotDone(f"{shard.id}: {node.name} listed, not attached yet: {error}")]
        return [f"{shard.id}: former member {node.name} rejoined {shard.primary.name} as a replica"]

    async def _release(self, shard: Shard, node: HeldNode, held: Any) -> list[str]:
        """Drop the returning `node` from the forensics list: the shard is at its replica target
        (a replacement took its place), so it stays parked and out of the shard."""

        async def change(topology: Topology) -> Topology | None:
            current = topology.shard(shard.id)
            if not _still_holds(current, shard.primary, node):
                return None
            kept = [n for n in current.forensics if n.name != node.name]
            return topology.next_with(current.model_copy(update={"forensics": kept}))

        await compare_and_set_loop_on(self.topology, change, lambda: self.locks.assert_held(held))
        return [
            f"{shard.id}: released {node.name} from forensics, the shard is at its "
            f"{shard.replica_target} replicas"
        ]

    async def _remove_released(self, shard: Shard, node: HeldNode) -> list[str]:
        assert self.actuator is not None
        try:
            removed = await asyncio.to_thread(self.actuator.remove, node.name)
        except Exception as error:  # an engine away: the node stays parked, listed nowhere
            return [NotDone(f"{shard.id}: {node.name} stays parked; removing it failed: {error}")]
        if removed:
            return [f"{shard.id}: removed {', '.join(removed)}, started by the actuator"]
        line = f"{shard.id}: {node.name} stays parked, not started by the actuator"
        log.info(line)
        return [line]

    async def _bound_forensics(self, shard: Shard, held: Any) -> list[str]:
        """Keep the forensics list within its bound (a count and an age)."""

        async def change(topology: Topology) -> Topology | None:
            now_held = topology.shard(shard.id)
            kept = bounded(now_held.forensics, self.forensics, time.time())
            if now_held.primary.name != shard.primary.name or kept == now_held.forensics:
                return None
            return topology.next_with(now_held.model_copy(update={"forensics": kept}))

        before = {n.name for n in shard.forensics}
        published = await compare_and_set_loop_on(
            self.topology, change, lambda: self.locks.assert_held(held)
        )
        after = {n.name for n in published.shard(shard.id).forensics}
        return [
            f"{shard.id}: dropped {name} from forensics, beyond the bound"
            for name in sorted(before - after)
        ]

    def _needed(self, shard: Shard) -> int:
        return membership.required_replicas(self.min_replicas, len(shard.replicas))

    async def _write_quorum_off(self, shard: Shard) -> bool:
        """Does the appointed primary ask for another number of replicas than the shard needs
        now (replicas listed or gone since its appointment)?"""
        try:
            async with connect(shard.primary, timeout=0.5) as conn:
                info = await conn.info("replication")
                fence = await conn.get(FENCE_KEY)
                setting = await conn.config_get("min-replicas-to-write")
        except (RedisError, OSError):
            return False
        if info.get("role") != "master" or membership.is_parked(info):
            return False  # restarted (parked) since: never lift its guard
        if fence is None or int(fence) != shard.epoch:
            return False  # not appointed for this epoch: never make such a node writable
        return int(setting.get("min-replicas-to-write", -1)) != self._needed(shard)

    async def _set_write_quorum(self, shard: Shard, held: Any) -> list[str]:
        if not await self._write_quorum_off(shard):
            return []
        needed = self._needed(shard)
        await self.locks.assert_held(held)
        async with connect(shard.primary) as conn:
            for name, value in membership.write_quorum(needed).items():
                await conn.config_set(name, value)
        return [f"{shard.id}: primary {shard.primary.name} accepts writes with {needed} replicas"]

    async def _under_lock(self, shard: Shard, action: Any) -> list[str]:
        try:
            held = await self.locks.acquire("shard", f"{RATEQUEUE_SERVICE}/{shard.id}", self.holder)
        except LockBusy:
            return []  # a failover (or another keeper) is at work on this shard
        try:
            # Read again under the lock: the shard may have changed since the first look.
            topology = await self.topology.load()
            current = topology.shard(shard.id) if topology else None
            if current is None or current.primary.name != shard.primary.name:
                return []
            return await action(current, held)
        finally:
            await self.locks.release(held)

    async def _park_strays(self, shard: Shard, held: Any) -> list[str]:
        parked = await detach_unlisted_replicas(shard, lambda: self.locks.assert_held(held))
        return [f"{shard.id}: parked {address}, attached but not listed" for address in parked]

    async def _rejoin(self, shard: Shard, held: Any) -> list[str]:
        """Attach every listed replica that answers and follows anything else."""
        async with connect(shard.primary) as conn:
            info = await conn.info("replication")
            fence = await conn.get(FENCE_KEY)
        if info.get("role") != "master" or fence is None or int(fence) != shard.epoch:
            return []  # not the appointed primary of this epoch (any more): leave it be
        done = []
        for replica in shard.replicas:
            with contextlib.suppress(RedisError, OSError):
                async with connect(replica) as conn:
                    host = shard.primary.peer_host or shard.primary.host
                    if membership.points_at(
                        await conn.info("replication"), host, shard.primary.port
                    ):
                        continue
                    await self.locks.assert_held(held)
                    await membership.attach(conn, shard.primary)
                    done.append(
                        f"{shard.id}: listed replica {replica.name} rejoined {shard.primary.name}"
                    )
        return done

    async def _reappoint(self, shard: Shard, held: Any) -> list[str]:
        """The listed primary restarted (it boots parked) and nobody replaced it: appoint it again
        in a new shard epoch, then let its listed replicas follow it."""
        async with connect(shard.primary) as conn:
            if not membership.is_parked(await conn.info("replication")):
                return []
            behind = await self._holds_less_than_a_replica(conn, shard)
            if behind:
                # Its disk kept less than it had (an AOF not rewritten yet after a full sync, a
                # postponed write): appointing it would make the replicas drop what it lacks.
                if not await self._flag(shard, held):
                    return []  # flagged already
                return [
                    f"{shard.id}: primary {shard.primary.name} came back parked but {behind}; "
                    "not appointed again: a person must choose (docs/membership.md)"
                ]

            async def change(topology: Topology) -> Topology | None:
                current = topology.shard(shard.id)
                if current.primary.name != shard.primary.name:
                    return None
                epoch = topology.epoch + 1
                await self.locks.assert_held(held)
                needed = membership.required_replicas(self.min_replicas, len(current.replicas))
                lineage = await membership.appoint_primary(conn, epoch, min_replicas=needed)
                enqueues = await membership.enqueues_applied(conn)
                updated = current.model_copy(
                    update={
                        "epoch": epoch,
                        "lineage": lineage,
                        "appointed_enqueues": enqueues,
                        "status": "ok",
                    }
                )
                return topology.next_with(updated)

            published = await compare_and_set_loop_on(
                self.topology, change, lambda: self.locks.assert_held(held)
            )
        appointed = published.shard(shard.id)
        done = [
            f"{shard.id}: primary {shard.primary.name} answered parked after a restart; "
            f"appointed again at epoch {appointed.epoch}"
        ]
        return done + await self._rejoin(appointed, held)

    async def _holds_less_than_a_replica(self, primary: aioredis.Redis, shard: Shard) -> str:
        """Why the restarted primary may hold less than it acknowledged, or '' if it cannot.
        A replica that does not answer makes it impossible to tell: that is a reason too."""
        fence = await primary.get(FENCE_KEY)
        if fence is None or int(fence) != shard.epoch:
            # Written into its data at its appointment: an older one means its disk predates it.
            return f"its data holds fence {fence!r}, not its appointment's epoch {shard.epoch}"
        mine = await membership.enqueues_applied(primary)
        if shard.appointed_enqueues is not None and mine < shard.appointed_enqueues:
            return (
                f"applied {mine} enqueue calls, fewer than the {shard.appointed_enqueues} it was "
                "appointed with"
            )
        for replica in shard.replicas:
            try:
                async with connect(replica) as conn:
                    theirs = await membership.enqueues_applied(conn)
            except (RedisError, OSError) as error:
                return f"{replica.name} cannot tell what it holds ({error})"
            if theirs > mine:
                return f"applied {mine} enqueues where {replica.name} applied {theirs}"
        return ""

    async def _flag(self, shard: Shard, held: Any) -> bool:
        """Mark the shard escalated in the topology; False if it was already."""
        if shard.status == "escalated":
            return False
        await self._store_status(shard, held, "escalated", only_from=None)
        return True

    async def set_status(self, shard: Shard, status: str, *, only_from: str) -> None:
        """Set the shard's status if it still has the same primary and status `only_from`, under
        the shard's lock (never while a failover changes the shard; a busy lock skips it: the
        caller tries again on its next pass)."""

        async def store(current: Shard, held: Any) -> list[str]:
            await self._store_status(current, held, status, only_from=only_from)
            return []

        await self._under_lock(shard, store)

    async def _store_status(
        self, shard: Shard, held: Any, status: str, *, only_from: str | None
    ) -> None:
        async def change(topology: Topology) -> Topology | None:
            current = topology.shard(shard.id)
            if (
                current.status == status
                or current.primary.name != shard.primary.name
                or (only_from is not None and current.status != only_from)
            ):
                return None
            return topology.next_with(current.model_copy(update={"status": status}))

        await compare_and_set_loop_on(self.topology, change, lambda: self.locks.assert_held(held))

    async def _record_lineage(self, shard: Shard, held: Any) -> list[str]:
        if shard.lineage is not None:
            return []
        async with connect(shard.primary) as conn:
            info = await conn.info("replication")
            fence = await conn.get(FENCE_KEY)
        lineage = membership.settled_lineage(info)
        if lineage is None or fence is None or int(fence) != shard.epoch:
            return []

        async def change(topology: Topology) -> Topology | None:
            current = topology.shard(shard.id)
            if current.primary.name != shard.primary.name or current.lineage is not None:
                return None
            updated = current.model_copy(update={"lineage": lineage})
            return topology.next_with(updated)

        await compare_and_set_loop_on(self.topology, change, lambda: self.locks.assert_held(held))
        return [f"{shard.id}: recorded the lineage of {shard.primary.name} ({lineage.replid[:8]}…)"]
