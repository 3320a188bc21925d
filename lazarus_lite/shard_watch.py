"""Who watches the watchers: every controller node looks at every shard itself, so a shard that
cannot write is never silent, even when the sensors are.

Each controller node runs one pass every `watch_interval` seconds; for each shard of the
topology it:
- reports a **silent sensor** (`SensorSilent`): a sensor beside a listed replica whose last
  heartbeat is older than `sensor_silence_after`, once per silence;
- **probes the primary** itself and, when it has not answered for `self_report_after` seconds and
  no report about it has come in (no incident claimed for it: its sensors are dead, cut off or
  slow), reports it (`RedisMasterDown`, source `lazarus:<node>`) into the same stream the
  sensors use, so it goes through the same rule, quorum, checks and gates as theirs;
- watches the **outcome**: a shard whose primary cannot take writes (unreachable, not a primary,
  another fence epoch, fewer than `min_replicas` replicas acknowledging it), or whose writes
  through the API keep failing (`ratequeue.write_failures`: evidence to look, never a reason to
  act), for `unwritable_after` seconds is reported (`ShardUnwritable`, with what was seen and
  the last decision about the shard) and marked `unwritable` in the topology until it writes;
- watches the **replicas**: a listed replica that is not a healthy replica of the primary (not
  among the `online` replicas, lag within `REPLICA_MAX_LAG_SECONDS`, the primary's INFO
  replication shows: the same read as above) for `degraded_after` seconds is reported
  (`ShardDegraded`, naming it and since when this node missed it): the shard still writes, but
  one more failure stops its writes or leaves a failover without a candidate. Only a primary
  that answers as the shard's primary in its epoch is judged (one that does not is the
  unwritable watch's, and a failover's), each replica's clock starts anew with a new primary
  or epoch (a failover re-points the replicas), and nothing is filed while a workflow or the
  keeper holds the shard's lock; a replica being rejoined or provisioned that syncs within
  `degraded_after` pages nobody. The INFO names replicas by address and port; a listed replica
  it cannot name (compose nodes share a port) is asked itself whether it follows the primary.
  One report per replica per episode; the episode ends when it is a healthy replica again on
  `REPLICA_BACK_PASSES` passes in a row, and a shard that cannot write is left to the
  unwritable watch.

Reports are events: the controller that takes one audits it, escalates it and pages. Each report
is filed once per episode across all controller nodes (a claim in the control store). A report
the stream refuses (on etcd, the stream's Redis is dead while the store answers) is decided by
the node that filed it (`decide_unpublished`), so a primary dies and is failed over
without the stream; the sensors' reports wait in their buffers meanwhile, and their heartbeats
stop arriving, so the watch speaks for them once they look silent.

While the coordination store is unreachable no report can be filed and no controller can take a
lock, so nothing may act; the node keeps probing the primaries of the last topology it read,
and a primary down for `self_report_after`, the store unreachable as long (a connection error
or a read longer than `store_timeout`; a store that answers something unreadable is a bug to
log, not an outage), is handed to a person at once (`on_store_away`: a page with the reason,
recorded once the store is back), once per primary and epoch. When the store answers again the
watch goes on as before, and the incident is decided as usual. A node started while the store
is away has read no topology, so it knows no primary to probe and sends no such page: only its
blind-watch page (`watch_blind`, after `unwritable_after` of failed passes) tells a person.
A store that answers without a topology (it restarted empty, or the map was never published)
fails the pass the same way (`TopologyMissing`), so it pages too instead of watching nothing
in silence; the page says whether this node had read a map before.
Not for: deciding or acting on a shard (the controller's rules and the failover workflow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from common.cancellation import stop_if_cancelled
from detection.events import Event, new_event
from detection.probes import describe_error
from detection.sensor import incident_key
from detection.streams import EventStream, certainly_not_published
from lazarus_lite.audit import AuditLog
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.unreachable import STORE_UNREACHABLE
from lazarus_lite.errors import TopologyMissing
from lazarus_lite.held_records import LOG_UNREACHABLE
from lazarus_lite.shard_keeper import RATEQUEUE_SERVICE, ShardKeeper
from lazarus_lite.steps.ratequeue_promotion import connect
from ratequeue.membership import REPLICA_MAX_LAG_SECONDS, required_replicas
from ratequeue.topology import FENCE_KEY, NodeRef, Shard, Topology
from ratequeue.write_failures import FLUSH_EVERY_SECONDS, FailureRun

log = logging.getLogger(__name__)

# Sensors heartbeat every 5 s unless told otherwise (their heartbeats say how often).
DEFAULT_HEARTBEAT_EVERY = 5.0
WATCH_EVENT_TYPES = frozenset({"SensorSilent", "ShardUnwritable", "ShardDegraded"})

# How long the claim on a degraded replica's report lasts: the episode ends when a node sees the
# replica back (it withdraws the claim), so this only bounds a claim no node lived to withdraw;
# a degraded shard is paged once, not again each `report_ttl` while it stays so.
DEGRADED_CLAIM_TTL = 24 * 3600
# A replica's return ends its episode once seen on this many passes in a row: a replica that
# flaps (back for a pass now and then) stays one episode, paged once.
REPLICA_BACK_PASSES = 3

# What a node does with a primary it sees down while the store is unreachable: the event (as
# the watch would have reported it) and why nothing is done about it.
StoreAwayHandler = Callable[[Event, str], Awaitable[Any]]
# What a node does with a report the event stream did not take: decides it itself.
ReportDecider = Callable[[Event], Awaitable[Any]]


@dataclass(frozen=True)
class WatchSettings:
    interval: float = 1.0
    sensor_silence_after: float = 15.0
    self_report_after: float = 3.0
    unwritable_after: float = 20.0
    degraded_after: float = 60.0  # a listed replica not following the primary this long
    probe_timeout: float = 0.5
    min_replicas: int = 1
    environment: str = "dev"
    region: str = "local"
    report_ttl: int = 600
    reemit_every: float = 30.0  # a self-report of a primary that stays down is filed again
    store_timeout: float = 2.0  # a topology read longer than this counts as the store away
    # A stream that does not answer must not hold up the watch of every shard: a publish is
    # given up after this (and filed again on a later pass: it may still reach the stream).
    publish_timeout: float = 1.0


@dataclass(frozen=True)
class Writability:
    """What one look at a shard's primary found: `problem` is None when it can take writes."""

    reachable: bool
    problem: str | None
    # The primary answers as the shard's primary in its epoch: only then are its replicas
    # judged (`followers` is what its INFO showed).
    appointed: bool = False
    # (ip, port) of each replica the primary's INFO shows online within the lag bound.
    followers: tuple[tuple[str, int], ...] = ()


async def primary_writability(shard: Shard, min_replicas: int, timeout: float) -> Writability:
    """Can the shard's primary take a write now? Read-only: INFO replication and its fence."""
    try:
        async with connect(shard.primary, timeout=timeout) as conn:
            info = await conn.info("replication")
            fence = await conn.get(FENCE_KEY)
    except (RedisError, OSError) as error:
        return Writability(False, f"primary {shard.primary.name} unreachable "
                                  f"({describe_error(error)})")  # fmt: skip
    if info.get("role") != "master":
        return Writability(True, f"primary {shard.primary.name} is not a primary "
                                 f"(role {info.get('role')})")  # fmt: skip
    if fence is None or int(fence) != shard.epoch:
        return Writability(
            True,
            f"primary {shard.primary.name} holds fence "
            f"{fence.decode() if fence else 'none'}, not epoch {shard.epoch}",
        )
    needed = required_replicas(min_replicas, len(shard.replicas))
    following = tuple(
        (str(value.get("ip")), int(value.get("port", 0)))
        for key, value in info.items()
        if key.startswith("slave") and isinstance(value, dict)
        and value.get("state") == "online" and int(value.get("lag", 0)) <= REPLICA_MAX_LAG_SECONDS
    )  # fmt: skip
    if len(following) < needed:
        return Writability(True, f"primary {shard.primary.name} has {len(following)} of the "
                                 f"{needed} replicas it needs to accept writes",
                           appointed=True, followers=following)  # fmt: skip
    return Writability(True, None, appointed=True, followers=following)


async def follows(replica: NodeRef, primary: NodeRef, timeout: float) -> bool:
    """Does `replica` say it is a replica of `primary` with its link up? Read-only."""
    try:
        async with connect(replica, timeout=timeout) as conn:
            info = await conn.info("replication")
    except (RedisError, OSError):
        return False
    return (
        info.get("role") == "slave"
        and info.get("master_link_status") == "up"
        and int(info.get("master_port", 0)) == primary.port
        and str(info.get("master_host")) in {primary.host, primary.peer_host}
    )


async def missing_replicas(shard: Shard, seen: Writability, timeout: float) -> list[NodeRef]:
    """The listed replicas that are not healthy replicas of the shard's appointed primary, by
    its INFO (`seen`); a listed replica the INFO cannot tell apart from another (the same port
    on another host name) is asked itself. Each listed replica is looked for by name: counting
    would let an unlisted follower (parked by the keeper, but not under a kill switch) stand in
    for a dead listed one."""
    by_port: dict[int, int] = {}
    for replica in shard.replicas:
        by_port[replica.port] = by_port.get(replica.port, 0) + 1
    missing = []
    for replica in shard.replicas:
        names = {replica.host, replica.peer_host}
        if any(port == replica.port and ip in names for ip, port in seen.followers):
            continue
        if by_port[replica.port] == 1 and all(port != replica.port for _, port in seen.followers):
            missing.append(replica)  # its port alone names it, and the primary has none on it
            continue
        if not await follows(replica, shard.primary, timeout):
            missing.append(replica)
    return missing


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(wall))


class ShardWatch:
    def __init__(
        self,
        store: CoordinationStore,
        stream: EventStream,
        keeper: ShardKeeper,
        node_id: str,
        settings: WatchSettings,
        *,
        on_store_away: StoreAwayHandler | None = None,
        decide_unpublished: ReportDecider | None = None,
    ) -> None:
        self.store = store
        self.on_store_away = on_store_away
        self.decide_unpublished = decide_unpublished
        self.deciding: set[asyncio.Task] = set()  # reports this node decides itself
        self.stream = stream
        self.keeper = keeper
        self.node_id = node_id
        self.settings = settings
        self.topology = store.topology
        self.audit = AuditLog(store.records)
        self._down_since: dict[str, float] = {}  # primary@epoch -> when this node first failed
        self._unwritable_since: dict[str, tuple[str, float]] = {}  # shard -> (episode, since)
        # The report (its claim) of each listed replica this node sees missing -> since when
        # (monotonic, wall): a new primary or epoch is a new report, hence a new clock.
        self._missing_since: dict[str, tuple[float, float]] = {}
        # Of those, each seen back on the last passes -> on how many in a row; and those whose
        # report this node saw filed (by any node), so a claim gone means the episode ended.
        self._back_passes: dict[str, int] = {}
        self._seen_filed: set[str] = set()
        # Wall time since which this node has read the store without a long break (heartbeats
        # it could not read are not a sensor's silence), and its last good read.
        self._watching_since: float | None = None
        self._last_read: float = 0.0
        # What the store said last (topology, a heartbeat per shard), for when it is away; and
        # the primaries (primary@epoch) already handed to a person while it was.
        self._last_topology: Topology | None = None
        self._templates: dict[str, Event] = {}
        self._escalated_without_store: set[str] = set()
        self._store_away_since: float | None = None  # monotonic; None while it answers

    async def run_once(self) -> list[Event]:
        """One pass over every shard; returns the reports this node filed. Raises when the
        store cannot be read (after probing the last topology's primaries without it)."""
        try:
            topology = await asyncio.wait_for(self.topology.load(), self.settings.store_timeout)
        except STORE_UNREACHABLE as error:
            if self._store_away_since is None:
                self._store_away_since = time.monotonic()
            if self._last_topology is not None and self.on_store_away is not None:
                await self._watch_without_store(self._last_topology, error)
            raise
        self._store_away_since = None
        sensors = await self._sensor_heartbeats()
        failing_writes = await self._api_write_failures()
        self._last_topology = topology or self._last_topology
        self._templates.update({h.shard: h for h in sensors if h.shard is not None})
        now_wall = time.time()
        # A read lost now and then is no deafness; a gap of a heartbeat period or more is.
        if self._watching_since is None or now_wall - self._last_read > DEFAULT_HEARTBEAT_EVERY:
            self._watching_since = now_wall
        self._last_read = now_wall
        if topology is None:
            raise self._topology_missing()
        watched = {f"{s.primary.name}@{s.epoch}" for s in topology.shards}
        for target in set(self._down_since) - watched:
            del self._down_since[target]
        self._escalated_without_store &= watched
        filed: list[Event] = []
        for shard in topology.shards:
            try:  # one shard's trouble must not blind the watch to the others
                filed += await self._silent_sensors(shard, sensors)
                filed += await self._watch_primary(shard, sensors, failing_writes.get(shard.id, []))
            except Exception as error:
                log.warning("%s: watching shard %s failed: %s", self.node_id, shard.id, error)
        return filed

    def _topology_missing(self) -> TopologyMissing:
        """Why this pass watches nothing: the store holds no map (a failed pass, so a node that
        stays so tells a person through `watch_forever`)."""
        last = self._last_topology
        if last is None:
            return TopologyMissing("the coordination store holds no topology: no shard is watched "
                                   "until a map is published")  # fmt: skip
        shards = ", ".join(f"{s.id} (primary {s.primary.name})" for s in last.shards)
        return TopologyMissing(
            f"the coordination store answers but its topology is gone (it restarted empty?); "
            f"the map last read here was epoch {last.epoch}: {shards}. No shard is watched or "
            f"failed over until the map is put back, and the kill switch, breaker and locks "
            f"the store held are gone too"
        )

    async def _api_write_failures(self) -> dict[str, list[FailureRun]]:
        """The API's failing writes, or none while the record log that keeps them is away (on
        etcd, a Redis of its own): evidence to look, so its absence blinds nothing."""
        try:
            return await self.store.records.write_failures()
        except LOG_UNREACHABLE as error:
            log.info("%s: the API's write failures are unreadable: %s", self.node_id, error)
            return {}

    # -- sensors -----------------------------------------------------------------------------
    async def _sensor_heartbeats(self) -> list[Event]:
        return await self.store.sensors.heartbeats()

    async def _silent_sensors(self, shard: Shard, heartbeats: list[Event]) -> list[Event]:
        listed = {r.peer_address for r in shard.replicas} | {r.address for r in shard.replicas}
        filed = []
        for heartbeat in heartbeats:
            # Only a sensor beside a listed replica is expected to speak: one beside a node
            # promoted or held for forensics has nothing to watch and falls silent by design.
            if heartbeat.shard != shard.id or heartbeat.host not in listed:
                continue
            assert self._watching_since is not None
            silent_for = min(heartbeat.age_seconds(), time.time() - self._watching_since)
            if silent_for < self.settings.sensor_silence_after:
                continue
            reason = (
                f"sensor {heartbeat.source} beside {heartbeat.host} (shard {shard.id}) sent no "
                f"heartbeat for {silent_for:.0f} s (bound {self.settings.sensor_silence_after:g}"
                " s): its shard's primary is watched by the controllers' own probes meanwhile"
            )
            episode = f"{heartbeat.source}@{heartbeat.occurred_at.timestamp():.3f}"
            report = self._report(
                "SensorSilent", shard, heartbeat.host, episode, reason, template=heartbeat
            )
            if await self._file_once(report):
                filed.append(report)
        return filed

    # -- the primary -------------------------------------------------------------------------
    async def _watch_primary(
        self, shard: Shard, heartbeats: list[Event], failing_writes: list[FailureRun]
    ) -> list[Event]:
        now = time.monotonic()
        seen = await primary_writability(
            shard, self.settings.min_replicas, self.settings.probe_timeout
        )
        api_problem = self._api_evidence(failing_writes)
        if seen.problem is None and api_problem is not None:
            # The API cannot write where this node sees a healthy primary (another path, a
            # stale route): not a reason to act, but the shard is not writable for its users.
            seen = replace(seen, problem=api_problem)
        template = next((h for h in heartbeats if h.shard == shard.id), None)
        filed = []
        target = f"{shard.primary.name}@{shard.epoch}"
        if seen.reachable:
            self._down_since.pop(target, None)
            self._escalated_without_store.discard(target)
        else:
            since = self._down_since.setdefault(target, now)
            if now - since >= self.settings.self_report_after and not self._sensors_speak_for(
                shard, heartbeats
            ):
                report = await self._self_report(shard, seen, now - since, template)
                if report is not None:
                    filed.append(report)
        filed += await self._watch_outcome(shard, seen, now, template)
        filed += await self._watch_replicas(shard, seen, now, template)
        return filed

    def _api_evidence(self, runs: list[FailureRun]) -> str | None:
        """The API's writes to the shard have failed for `self_report_after` seconds and still
        fail (a run updated within the last few seconds)."""
        now = time.time()
        current = [
            r for r in runs
            if now - r.at <= 5 * FLUSH_EVERY_SECONDS + self.settings.interval
            and now - r.since >= self.settings.self_report_after
        ]  # fmt: skip
        if not current:
            return None
        run = max(current, key=lambda r: r.count)
        return (f"the API's writes to it have failed {run.count} times in a row for "
                f"{now - run.since:.0f} s (last: {run.last_error})")  # fmt: skip

    def _sensors_speak_for(self, shard: Shard, heartbeats: list[Event]) -> bool:
        """Does the shard have a live sensor (one whose heartbeats still come)? Then detection
        is theirs: a primary they see as fine while this node cannot reach it is this node's
        problem, not the primary's, and one they see down they report themselves. Until this
        node has listened for `sensor_silence_after`, it cannot tell: it assumes they do."""
        assert self._watching_since is not None
        if time.time() - self._watching_since < self.settings.sensor_silence_after:
            return True
        for heartbeat in heartbeats:
            # Only a sensor watching this primary in this epoch speaks for it.
            if heartbeat.shard != shard.id or heartbeat.data.get("primary") != shard.primary.name:
                continue
            if heartbeat.data.get("shard_epoch", shard.epoch) != shard.epoch:
                continue
            period = heartbeat.data.get("heartbeat_every", DEFAULT_HEARTBEAT_EVERY)
            if not isinstance(period, int | float) or period <= 0:
                period = DEFAULT_HEARTBEAT_EVERY
            if heartbeat.age_seconds() <= 2 * period + self.settings.interval:
                return True
        return False

    async def _self_report(
        self, shard: Shard, seen: Writability, down_for: float, template: Event | None
    ) -> Event | None:
        """Report the primary down as a sensor would, unless a report about it came in lately
        (while it stays down, again every `reemit_every`: after a refusal the controller decides a
        report on its own, and collapses the rest as duplicates)."""
        event = self._primary_down(shard, seen, down_for, template)
        key = event.dedup_key
        claim_ttl = await self.store.incidents.held_for("RedisMasterDown", key)
        claimed_for = self.settings.report_ttl - claim_ttl if claim_ttl is not None else None
        if claimed_for is not None and claimed_for < self.settings.reemit_every:
            return None  # reported lately (by a sensor, or by a node of ours)
        if not await self._file_once(
            event, claim=f"self:{key}", ttl=int(self.settings.reemit_every)
        ):
            return None
        log.warning("%s: %s (no sensor reported it): reported it", self.node_id, seen.problem)
        return event

    def _primary_down(
        self, shard: Shard, seen: Writability, down_for: float, template: Event | None
    ) -> Event:
        """The primary down, reported as a sensor would (the same incident key)."""
        service = template.service if template else RATEQUEUE_SERVICE
        return self._event(
            "RedisMasterDown",
            shard,
            shard.primary.address,
            incident_key(service, shard.id, shard.primary.name, shard.epoch),
            template=template,
            data={
                "master_link_status": "down",
                "primary": shard.primary.name,
                "primary_address": shard.primary.address,
                "primary_peer_address": shard.primary.peer_address,
                "shard_epoch": shard.epoch,
                "last_error": seen.problem,
                "observer": "controller",
                "down_for_seconds": round(down_for, 1),
            },
        )

    async def _watch_without_store(self, topology: Topology, store_error: Exception) -> None:
        """The store is unreachable: no lock can be taken, so nothing may act. A primary of the
        last topology read that stays down for `self_report_after`, the store away as long,
        goes to a person, once per primary and epoch, saying why nothing is done. (A blip of
        the store, a pass or two while a workflow promotes, pages nobody.)"""
        assert self.on_store_away is not None and self._store_away_since is not None
        now = time.monotonic()
        store_away = now - self._store_away_since >= self.settings.self_report_after
        for shard in topology.shards:
            target = f"{shard.primary.name}@{shard.epoch}"
            seen = await primary_writability(
                shard, self.settings.min_replicas, self.settings.probe_timeout
            )
            if seen.reachable:
                self._down_since.pop(target, None)
                self._escalated_without_store.discard(target)
                continue
            down_for = now - self._down_since.setdefault(target, now)
            if down_for < self.settings.self_report_after or not store_away:
                continue
            if target in self._escalated_without_store:
                continue
            self._escalated_without_store.add(target)
            event = self._primary_down(shard, seen, down_for, self._templates.get(shard.id))
            reason = (
                f"{seen.problem}, down for {down_for:.0f} s, while the coordination store is "
                f"unreachable ({describe_error(store_error)}): no controller can take the "
                f"shard's lock or change its topology, so nothing is promoted. A person must "
                f"look now; the controllers fail the shard over by themselves once the store "
                f"answers again"
            )
            try:
                await self.on_store_away(event, reason)
            except Exception as failure:  # telling must never stop watching
                log.error("%s: %s; and telling a person failed: %s", self.node_id, reason,
                          failure)  # fmt: skip

    async def _watch_outcome(
        self, shard: Shard, seen: Writability, now: float, template: Event | None
    ) -> list[Event]:
        if seen.problem is None:
            self._unwritable_since.pop(shard.id, None)
            if shard.status == "unwritable" and await self._may_clear_flag(shard):
                await self.keeper.set_status(shard, "ok", only_from="unwritable")
                # The episode is over: a later one of the same primary is reported anew.
                await self.store.watch.end_unwritable_episode(shard.id, self._unwritable_key(shard))
            return []
        episode = f"{shard.primary.name}@{shard.epoch}"
        if self._unwritable_since.get(shard.id, ("", 0.0))[0] != episode:
            self._unwritable_since[shard.id] = (episode, now)
        unwritable_for = now - self._unwritable_since[shard.id][1]
        if unwritable_for < self.settings.unwritable_after:
            return []
        flagger = await self.store.watch.unwritable_flagger(shard.id)
        if flagger is not None and flagger != self.node_id:
            return []  # another node reported it and owns the flag: no flip-flopping views
        filer = await self.store.watch.report_filer(self._unwritable_key(shard))
        if flagger is None and filer is not None and filer != self.node_id:
            return []  # filed by another node, whose flag lapsed: it may be writable there
        if flagger is None and filer is None:
            last = await self._last_decision(shard)
            reason = (
                f"shard {shard.id} has had no writable primary for {unwritable_for:.0f} s "
                f"(bound {self.settings.unwritable_after:g} s): {seen.problem}; "
                + (f"last decision: {last}" if last else "no decision about it is recorded")
            )
            # Its own incident each time (the controller collapses reports of one incident);
            # one filer per episode (the claim, deleted when the episode ends).
            started = f"{episode}@{time.time() - unwritable_for:.0f}"
            report = self._report("ShardUnwritable", shard, shard.primary.address, started,
                                  reason, template=template)  # fmt: skip
            if not await self._file_once(report, claim=self._unwritable_key(shard)):
                return []
            filed = [report]
        else:
            filed = []
        # This node filed it: it holds the flag while it sees the shard unwritable.
        await self.store.watch.flag_unwritable(
            shard.id, self.node_id, ttl=max(1, int(3 * self.settings.interval + 2))
        )
        if shard.status == "ok":
            await self.keeper.set_status(shard, "unwritable", only_from="ok")
        return filed

    async def _watch_replicas(
        self, shard: Shard, seen: Writability, now: float, template: Event | None
    ) -> list[Event]:
        """Report each listed replica missing from the primary's healthy replicas for
        `degraded_after`, once per episode across the nodes; end the episode when it is back."""
        prefix = f"{RATEQUEUE_SERVICE}/{shard.id}/ShardDegraded/"
        if not seen.appointed:
            # No primary of this epoch to follow (dead, failing over, fenced off): the unwritable
            # watch and the failover have the shard. Nothing is judged, ended or filed; a new
            # primary or epoch has reports (and clocks) of its own.
            return []
        missing = await missing_replicas(shard, seen, self.settings.probe_timeout)
        keys = {self._degraded_key(shard, r): r for r in missing}
        for key in [k for k in self._missing_since if k.startswith(prefix) and k not in keys]:
            # Back (or no longer listed, or another primary or epoch) on enough passes in a row:
            # the episode is over, and the claim goes so a later one pages again (forgotten only
            # once it went: a failed withdrawal is tried again next pass, not left to silence
            # the next loss for a day).
            self._back_passes[key] = self._back_passes.get(key, 0) + 1
            if self._back_passes[key] < REPLICA_BACK_PASSES:
                continue
            await self.store.watch.withdraw_report(key)
            del self._missing_since[key], self._back_passes[key]
            self._seen_filed.discard(key)
        for key in keys:
            self._back_passes.pop(key, None)  # missing again: the return did not last
            self._missing_since.setdefault(key, (now, time.time()))
        if seen.problem is not None:
            # It does not write (too few replicas, or the API's writes fail): the unwritable
            # watch pages for that; the clocks run on for when it writes again.
            return []
        due = [k for k in keys if now - self._missing_since[k][0] >= self.settings.degraded_after]
        due = [k for k in due if await self._first_to_report(k, now)]
        if not due:
            return []
        lock = await self.store.locks.holder("shard", f"{RATEQUEUE_SERVICE}/{shard.id}")
        if lock is not None:
            return []  # a failover or the keeper is changing the shard: filed after, if still so
        filed = []
        healthy = len(shard.replicas) - len(missing)
        listing = ", ".join(
            f"{r.name} (since {_clock(self._missing_since[k][1])})" for k, r in keys.items()
        )
        for key in due:
            replica = keys[key]
            missing_for = now - self._missing_since[key][0]
            reason = (
                f"shard {shard.id} runs with {healthy} of its {len(shard.replicas)} listed "
                f"replicas: {replica.name} ({replica.address}) has not been a healthy replica of "
                f"primary {shard.primary.name} for {missing_for:.0f} s (bound "
                f"{self.settings.degraded_after:g} s; missing now: {listing}). It still writes, "
                "but one more failure stops its writes or leaves a failover without a candidate"
            )
            # Its own incident each episode (the controller collapses reports of one incident).
            incident = f"{key}@{self._missing_since[key][1]:.0f}"[:255]
            report = self._event(
                "ShardDegraded", shard, replica.address, incident, template=template,
                data={
                    "reason": reason, "primary": shard.primary.name, "shard_epoch": shard.epoch,
                    "replica": replica.name, "replica_address": replica.address,
                    "missing_since": round(self._missing_since[key][1], 3),
                    "missing_for_seconds": round(missing_for, 1),
                    "missing": [r.name for r in missing],
                    "listed": len(shard.replicas), "healthy": healthy,
                },
            )  # fmt: skip
            if await self._file_once(report, claim=key, ttl=DEGRADED_CLAIM_TTL):
                log.warning("%s: %s", self.node_id, reason)
                filed.append(report)
        return filed

    async def _first_to_report(self, key: str, now: float) -> bool:
        """Whether no node has filed the report `key` this episode, so this one may. Read before
        filing, not tried on every pass: on etcd each try grants a lease of a day. A claim seen
        and then gone was withdrawn by a node that saw the replica back: the episode ended
        there, so this node's clock starts again rather than paging at once."""
        if await self.store.watch.report_filer(key) is not None:
            self._seen_filed.add(key)
            return False
        if key in self._seen_filed:
            self._seen_filed.discard(key)
            self._missing_since[key] = (now, time.time())
            return False
        return True

    def _degraded_key(self, shard: Shard, replica: NodeRef) -> str:
        episode = f"{shard.primary.name}@{shard.epoch}/{replica.name}"
        return f"{RATEQUEUE_SERVICE}/{shard.id}/ShardDegraded/{episode}"[:255]

    def _unwritable_key(self, shard: Shard) -> str:
        episode = f"{shard.primary.name}@{shard.epoch}"
        return f"{RATEQUEUE_SERVICE}/{shard.id}/ShardUnwritable/{episode}"[:255]

    async def _may_clear_flag(self, shard: Shard) -> bool:
        """Only the node that set the flag clears it, or anyone once that node stopped holding it
        (it died, or no longer sees the shard unwritable but could not clear it)."""
        flagger = await self.store.watch.unwritable_flagger(shard.id)
        return flagger is None or flagger == self.node_id

    async def _last_decision(self, shard: Shard) -> str | None:
        """The newest decision the audit trail holds about the shard, as `outcome: reason`."""
        try:
            records = await self.audit.list(limit=200)
        except LOG_UNREACHABLE as error:
            return f"unknown (the audit trail is unreachable: {describe_error(error)})"
        for record in records:
            if record.event.get("shard") != shard.id or record.event.get("type") in {
                "SensorHeartbeat",
                *WATCH_EVENT_TYPES,
            }:
                continue
            if record.outcome in {"received", "duplicate"}:
                continue
            return f"{record.event.get('type')} {record.outcome}: {record.reason}"
        return None

    # -- filing ------------------------------------------------------------------------------
    def _report(
        self,
        type: str,
        shard: Shard,
        host: str,
        episode: str,
        reason: str,
        *,
        template: Event | None,
    ) -> Event:
        """A report about the watchers: a person must read `reason`."""
        return self._event(
            type, shard, host, f"{RATEQUEUE_SERVICE}/{shard.id}/{type}/{episode}"[:255],
            template=template,
            data={"reason": reason, "primary": shard.primary.name, "shard_epoch": shard.epoch},
        )  # fmt: skip

    def _event(
        self,
        type: str,
        shard: Shard,
        host: str,
        key: str,
        *,
        template: Event | None,
        data: dict[str, object],
    ) -> Event:
        """An event from this node, in the environment, region and service its shard's sensors
        report in (the settings' when no sensor ever spoke)."""
        return new_event(
            type,
            environment=template.environment if template else self.settings.environment,
            region=template.region if template else self.settings.region,
            service=template.service if template else RATEQUEUE_SERVICE,
            shard=shard.id,
            host=host,
            source=f"lazarus:{self.node_id}",
            incident_key=key,
            data=data,
        )

    async def _file_once(
        self, event: Event, claim: str | None = None, ttl: int | None = None
    ) -> bool:
        """Publish `event` unless a controller node filed it already in this episode. A report
        the stream does not take (its Redis away) is decided by this node itself when it has a
        decider: the stream is the only way to the others, and the claim just filed (in the
        coordination store) keeps the other nodes from deciding it too."""
        report = claim or event.dedup_key
        expiry = max(1, int(ttl if ttl is not None else self.settings.report_ttl))
        if not await self.store.watch.file_report(report, self.node_id, expiry):
            return False
        try:
            await asyncio.wait_for(self.stream.publish(event), self.settings.publish_timeout)
        except Exception as error:
            # Only a report the stream certainly never took is decided here: one that timed
            # out may reach the stream later (a paused Redis runs what waited; a Kinesis put
            # goes on in its thread) and be decided there too.
            if self.decide_unpublished is None or not certainly_not_published(error):
                await self.store.watch.withdraw_report(report)  # the next pass files it
                raise
            log.warning("%s: the event stream refused %s %s (%s): deciding it here",
                        self.node_id, event.type, event.id, describe_error(error))  # fmt: skip
            self._decide_here(event, report)
        return True

    def _decide_here(self, event: Event, report: str) -> None:
        """Decide `event` on this node, beside the watch (a decision may wait for a quorum
        round and a workflow's start); if it fails, the report is withdrawn so the next pass
        (of any node) files it again. The stream refused it, so no copy of it is there."""
        assert self.decide_unpublished is not None
        decide = self.decide_unpublished

        async def decide_or_withdraw() -> None:
            try:
                await decide(event)
            except Exception as error:
                log.warning("%s: deciding %s here failed: %s; filed again on a later pass",
                            self.node_id, event.id, describe_error(error))  # fmt: skip
                try:
                    await self.store.watch.withdraw_report(report)
                except Exception as withdraw_error:  # it expires by itself then
                    log.warning("%s: withdrawing report %s failed: %s", self.node_id, report,
                                describe_error(withdraw_error))  # fmt: skip

        task = asyncio.create_task(decide_or_withdraw(), name=f"{self.node_id}-decide-{event.id}")
        self.deciding.add(task)
        task.add_done_callback(self.deciding.discard)


async def watch_forever(
    watch: ShardWatch, on_blind: Callable[[str], Awaitable[None]] | None = None
) -> None:
    """The controller's background duty: one pass every `interval` seconds. A node that cannot
    watch (the control store unreachable) for `unwritable_after` seconds says so once through
    `on_blind` (a page: its reports could not be filed either), and again after it recovers
    and loses the store anew."""
    blind_since: float | None = None
    told = False
    while True:
        try:
            await watch.run_once()
            blind_since, told = None, False
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: shard watch pass failed: %s", watch.node_id, error)
            now = time.monotonic()
            blind_since = now if blind_since is None else blind_since
            if (
                on_blind is not None
                and not told
                and now - blind_since >= (watch.settings.unwritable_after)
            ):
                told = True
                reason = (f"controller {watch.node_id} cannot watch the shards for "
                          f"{now - blind_since:.0f} s: {describe_error(error)}")  # fmt: skip
                try:
                    await on_blind(reason)
                except Exception as failure:  # telling must never stop watching
                    log.error("%s: %s; and telling a person failed: %s", watch.node_id, reason,
                              failure)  # fmt: skip
        stop_if_cancelled()
        await asyncio.sleep(watch.settings.interval)
