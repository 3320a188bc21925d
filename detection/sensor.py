"""The heartbeat sensor that runs beside one replica and watches that replica's primary.

Every `interval` the sensor looks up, in the topology, the shard whose replicas include its
replica, PINGs that shard's primary on the peer address with a short timeout, and reads its own
replica's `INFO replication`. After `threshold` consecutive failed PINGs, or at once when the
primary's host refused the connection twice in a row (a process that died, not one that is slow
or cut off: see `probes.ProbeResult.refused`), it publishes one `RedisMasterDown` for the
incident (key `{service}/{shard}/RedisMasterDown/{primary}@{epoch}`,
the same for every sensor of the shard, so the controller can correlate them); when the primary
answers again it publishes one `RedisMasterRecovered` with the same key. Every `heartbeat_every`
it publishes a `SensorHeartbeat`, so a sensor that went silent is itself visible. A replica that
is not a replica of any shard in the topology (promoted, held for forensics, unknown) makes the
sensor idle: it publishes nothing.

Between cycles the sensor holds one idle connection to the primary: the moment the primary's
host closes or resets it (the process died), the next cycle starts at once instead of after the
interval. A stalled or cut-off primary closes nothing: silence still needs the threshold.

The topology comes from a `TopologySource`: the control store's (Redis) or etcd's, when the
sensor is given the etcd members. The sensor follows the source's watch, so a new epoch (a
failover's new primary) starts a cycle at once; while that watch is broken (it raised) the
cycles poll the source every `topology_refresh` instead, until the watch delivers again.

An event that could not be published (control store or stream unreachable) is retried on the
next cycle; no error stops the sensor.

For: detection. Not for: remediation or any write to Redis: sensors only read (the controller
verifies and acts; detection stays separate from action).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.cancellation import cancel_until_done, stop_if_cancelled
from common.errors import InvalidSetting
from common.etcd_client import EtcdClient, endpoints_setting
from detection import probes
from detection.errors import InvalidEvent, InvalidSensorConfig
from detection.events import Event, new_event
from detection.metrics import SensorMetrics
from detection.probes import ProbeResult
from detection.streams import EventStream
from notifications.notifier import Notifier
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.topology import NodeRef, Shard, Topology, TopologySource, TopologyStore

log = logging.getLogger(__name__)

SensorState = Literal["idle", "ok", "failing", "down"]


@dataclass(frozen=True)
class SensorConfig:
    control_url: str
    replica: str  # 'host:port' of the watched replica, on its peer address
    environment: str = "dev"
    region: str = "local"
    service: str = "ratequeue"
    interval: float = 0.25
    threshold: int = 3
    ping_timeout: float = 0.2
    source_host: str | None = None  # local address the PINGs leave from (default: any)
    heartbeat_every: float = 5.0
    # While the primary stays down, report it again this often: a first report the controller
    # declined (a check raced, a gate was closed) must not silence the incident for good.
    reemit_every: float = 30.0
    name: str | None = None  # default: sensor@<replica>
    info_timeout: float = 0.5
    control_timeout: float = 1.0  # bound on a topology read or a publish
    # While the topology watch is broken, re-read the topology at most this often.
    topology_refresh: float = 1.0
    etcd_endpoints: str | None = None  # the topology is in etcd (comma-separated member URLs)

    def __post_init__(self) -> None:
        try:
            probes.parse_address(self.replica)
        except ValueError as error:
            raise InvalidSensorConfig("replica", str(error)) from None
        positive = ("interval", "ping_timeout", "heartbeat_every", "reemit_every", "info_timeout",
                    "control_timeout")  # fmt: skip
        for setting in positive:
            value = getattr(self, setting)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidSensorConfig(setting, f"{value!r} is not a number > 0")
        if not (isinstance(self.topology_refresh, int | float) and self.topology_refresh >= 0):
            raise InvalidSensorConfig("topology_refresh", f"{self.topology_refresh!r} is not >= 0")
        if not isinstance(self.threshold, int) or self.threshold < 1:
            raise InvalidSensorConfig("threshold", f"{self.threshold!r} is not an integer >= 1")
        if self.etcd_endpoints is not None:
            try:
                endpoints_setting(self.etcd_endpoints)
            except InvalidSetting as error:
                raise InvalidSensorConfig("etcd_endpoints", str(error)) from None
        # Every event the sensor will publish must pass the schema: refuse now, not per event.
        try:
            new_event("SensorHeartbeat", environment=self.environment, region=self.region,
                      service=self.service, host=self.replica, source=self.source)  # fmt: skip
        except InvalidEvent as error:
            for event_field, setting in (("environment", "environment"), ("region", "region"),
                                         ("service", "service"), ("source", "name")):  # fmt: skip
                if f"field '{event_field}'" in error.reason:
                    raise InvalidSensorConfig(setting, error.reason) from None
            raise InvalidSensorConfig("replica", error.reason) from None

    @property
    def source(self) -> str:
        return self.name or f"sensor@{self.replica}"


# How long a sensor waits before confirming a refusal: long enough that a probe racing a
# process's restart does not count twice, short next to the silence threshold.
REFUSAL_CONFIRM_AFTER = 0.05
# The least time between a broken topology watch and the next one, and the longest the watch
# itself goes without re-reading (Redis) or re-watching (etcd) when the store is away: a
# `topology_refresh` of 0 (poll every cycle) must not make the watch spin.
WATCH_REFRESH_FLOOR = 0.5


@dataclass
class _Watch:
    """What the sensor watches now; replaced when the shard, its primary or its epoch change."""

    shard: str
    epoch: int
    primary: NodeRef
    replica: NodeRef
    failures: int = 0
    last_error: str | None = None
    refused: bool = False  # the last failure was a refusal, confirmed by a second probe
    down_reported: bool = False  # RedisMasterDown published, RedisMasterRecovered not yet
    reported_at: float = 0.0  # when the last RedisMasterDown of this incident was published

    def same_target(self, shard: Shard) -> bool:
        return (self.shard, self.epoch, self.primary) == (shard.id, shard.epoch, shard.primary)


@dataclass(frozen=True)
class CycleResult:
    """What one check cycle saw and published (for tests, logs and `status`)."""

    state: SensorState
    shard: str | None = None
    primary: str | None = None
    consecutive_failures: int = 0
    probe: ProbeResult | None = None
    replica_info: dict[str, Any] | None = None
    published: list[Event] = field(default_factory=list)
    reason: str | None = None  # why idle


def find_replica(topology: Topology, host: str, port: int) -> tuple[Shard, NodeRef] | None:
    """The shard listing `host:port` (client or peer address) among its replicas."""
    for shard in topology.shards:
        for replica in shard.replicas:
            if replica.port == port and host in (replica.host, replica.peer_host):
                return shard, replica
    return None


def incident_key(service: str, shard: str, primary: str, epoch: int) -> str:
    return f"{service}/{shard}/RedisMasterDown/{primary}@{epoch}"


def _address(node: NodeRef) -> tuple[str, int]:
    return node.peer_host or node.host, node.port


class Sensor:
    """Watches the primary of one replica; see the module docstring. The stream is the
    caller's (it closes it); the sensor's own control-store connection is closed by `aclose`."""

    def __init__(
        self,
        config: SensorConfig,
        stream: EventStream,
        *,
        control: aioredis.Redis | None = None,
        topology: TopologySource | None = None,
        pager: Notifier | None = None,
        metrics: SensorMetrics | None = None,
    ) -> None:
        """`topology`: where the map is read and watched (the caller's; default: etcd when
        `config.etcd_endpoints` names members, else the control store)."""
        self.config = config
        self.stream = stream
        self.metrics = metrics or SensorMetrics()
        self.pager = pager  # pages the on-call directly when the primary goes down
        self.name = config.source
        self._host, self._port = probes.parse_address(config.replica)
        self._owns_control = control is None
        self._control = control or aioredis.Redis.from_url(
            config.control_url,
            socket_timeout=config.control_timeout,
            socket_connect_timeout=config.control_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._etcd: EtcdClient | None = None
        if topology is None and config.etcd_endpoints is not None:
            self._etcd = EtcdClient.from_setting(config.etcd_endpoints)
            topology = EtcdTopologyStore(self._etcd)
        self._source: TopologySource = topology or TopologyStore(self._control)
        self._topology: Topology | None = None
        self._invalid_reported = False  # the stored map is invalid, and was logged as such
        self._topology_read_at = -math.inf
        self._following: asyncio.Task | None = None  # the watch's task, started by a cycle
        self._watch_delivers = False  # the watch delivered a map and has not broken since
        self._control_ok = True
        self._watch: _Watch | None = None
        self._last_heartbeat = -math.inf
        self.last_result: CycleResult | None = None
        self._woken = asyncio.Event()  # the held link to the primary dropped
        self._link: tuple[tuple[str, int], asyncio.Task] | None = None

    # -- the control store -------------------------------------------------------------------

    async def _refresh_topology(self) -> Topology | None:
        """The topology: as the watch last delivered it while the watch works; else re-read,
        at most every `topology_refresh` s. On a failed read, the last one known (the sensor
        keeps watching what it knew)."""
        self._follow_topology()
        if self._watch_delivers:
            return self._topology
        now = time.monotonic()
        if now - self._topology_read_at < self.config.topology_refresh:
            return self._topology
        self._topology_read_at = now
        try:
            async with asyncio.timeout(self.config.control_timeout):
                read = await self._source.load()
        except ValueError as error:  # an invalid document: reported once, not every cycle
            if not self._invalid_reported:
                log.error("%s: the stored topology is invalid, keeping the last one: %s",
                          self.name, error)  # fmt: skip
            self._invalid_reported = True
            return self._topology
        except Exception as error:
            self._control_trouble(f"cannot read the topology: {probes.describe_error(error)}")
            return self._topology
        self._control_back()
        self._invalid_reported = False
        self._topology = read
        return self._topology

    def _follow_topology(self) -> None:
        """Start following the source's watch (once; again after it broke)."""
        if self._following is None or self._following.done():
            self._following = asyncio.ensure_future(self._follow_watch())

    async def _follow_watch(self) -> None:
        refresh = max(self.config.topology_refresh, WATCH_REFRESH_FLOOR)
        known = self._topology.epoch if self._topology is not None else 0
        changes = self._source.watch(after_epoch=known, refresh_every=refresh)
        try:
            async with contextlib.aclosing(changes):  # type: ignore[type-var]
                async for topology in changes:
                    self._take_watched(topology)
        except Exception as error:
            # Once per breakdown: a watch that breaks again at once is not news.
            level = logging.WARNING if self._watch_delivers else logging.DEBUG
            log.log(level, "%s: the topology watch broke (%s); polling every %.3g s until it "
                    "delivers again", self.name, probes.describe_error(error),
                    self.config.topology_refresh)  # fmt: skip
        finally:
            self._watch_delivers = False
        # The next cycle starts a new watch; not sooner than this, so a watch that breaks at
        # once does not spin.
        await asyncio.sleep(refresh)

    def _take_watched(self, topology: Topology) -> None:
        """A map the watch delivered: newer than any known, it replaces it and the next cycle
        starts now (a failover's new primary is watched without waiting for the interval)."""
        self._watch_delivers = True
        if self._topology is None or topology.epoch > self._topology.epoch:
            self._topology = topology
            self._woken.set()

    def _control_trouble(self, message: str) -> None:
        if self._control_ok:
            log.warning("%s: %s (retrying every cycle)", self.name, message)
        else:
            log.debug("%s: %s", self.name, message)
        self._control_ok = False

    def _control_back(self) -> None:
        if not self._control_ok:
            log.warning("%s: control store reachable again", self.name)
        self._control_ok = True

    async def _page(self, event: Event) -> None:
        if self.pager is None:
            return
        try:
            await self.pager.page(
                event.dedup_key, event.service,
                f"{event.service} shard {event.shard}: primary {event.host} down "
                f"(seen from {self.name})",
                details=event.data, source=self.name, event_id=event.id,
            )  # fmt: skip
        except Exception as error:  # paging must never stop detection
            log.warning("%s: paging failed: %s", self.name, error)

    async def _publish(self, event: Event) -> bool:
        try:
            async with asyncio.timeout(self.config.control_timeout):
                await self.stream.publish(event)
        except Exception as error:
            self.metrics.publish_ended(event.type, ok=False)
            self._control_trouble(f"cannot publish {event.type}: {probes.describe_error(error)}")
            return False
        self.metrics.publish_ended(event.type, ok=True)
        level = logging.DEBUG if event.type == "SensorHeartbeat" else logging.WARNING
        log.log(level, "%s: published %s %s", self.name, event.type,
                event.incident_key or event.host)  # fmt: skip
        return True

    # -- one cycle ---------------------------------------------------------------------------

    async def check_once(self) -> CycleResult:
        """Run one check cycle; never raises for an unreachable node, store or stream."""
        # Heartbeats are timed from cycle starts: those stay on the interval grid, while cycle
        # ends jitter with the probes' latency (and would skip a heartbeat now and then).
        cycle_started = time.monotonic()
        topology = await self._refresh_topology()
        if topology is None:
            return self._idle("no topology in the control store (yet)")
        found = find_replica(topology, self._host, self._port)
        if found is None:
            return self._idle(f"{self.config.replica} is not a replica of any shard")
        shard, replica = found
        if self._watch is None or not self._watch.same_target(shard):
            if self._watch is not None:
                log.info("%s: now watching %s of shard %s at epoch %d", self.name,
                         shard.primary.name, shard.id, shard.epoch)  # fmt: skip
            self._watch = _Watch(shard.id, shard.epoch, shard.primary, replica)
        watch = self._watch
        watch.replica = replica

        primary_host, primary_port = _address(watch.primary)
        self._hold_link_to(primary_host, primary_port)
        probe, (info, _) = await asyncio.gather(
            probes.ping(
                primary_host,
                primary_port,
                self.config.ping_timeout,
                source_host=self.config.source_host,
            ),
            probes.replication_info_or_error(self._host, self._port, self.config.info_timeout),
        )
        published: list[Event] = []
        self.metrics.probed(probe)  # the refused PING too: both were sent
        if not (probe.ok or probe.refused or probe.silent):
            # The host answered, but not PONG: most often a reset from a process dying between
            # our connect and its exit (the link's drop woke this cycle that early), its port
            # not closed yet. Look again once it is gone, as a refusal is confirmed, rather
            # than a whole interval later; the cycle still counts one failure, and a report
            # still needs two refusals.
            probe = await self._ping_again(primary_host, primary_port)
        if probe.refused:
            # Confirm a moment later: a second refusal is the process's death, not a restart
            # under way; an answer then makes this cycle a success like any other.
            probe = await self._ping_again(primary_host, primary_port)
        watch.refused = probe.refused
        if probe.ok:
            watch.failures = 0
            watch.last_error = None
            if watch.down_reported:
                event = self._event("RedisMasterRecovered", watch, probe, info)
                if await self._publish(event):
                    watch.down_reported = False
                    published.append(event)
        else:
            watch.failures += 1
            watch.last_error = probe.error
            due_again = (
                watch.down_reported
                and cycle_started - watch.reported_at >= self.config.reemit_every
            )
            enough = watch.failures >= self.config.threshold or watch.refused
            if enough and (not watch.down_reported or due_again):
                event = self._event("RedisMasterDown", watch, probe, info)
                # Page and tell the controller in parallel: the controller acknowledges the
                # page only once its checks pass, and a person gets it if it does not.
                page = self._page(event) if not watch.down_reported else asyncio.sleep(0)
                published_ok, _ = await asyncio.gather(self._publish(event), page)
                if published_ok:
                    watch.down_reported = True
                    watch.reported_at = cycle_started
                    published.append(event)

        if cycle_started - self._last_heartbeat >= self.config.heartbeat_every:
            self._last_heartbeat = cycle_started
            heartbeat = new_event(
                "SensorHeartbeat", environment=self.config.environment,
                region=self.config.region, service=self.config.service, shard=watch.shard,
                host=watch.replica.address, source=self.name,
                data={"primary": watch.primary.name, "ok": probe.ok,
                      "heartbeat_every": self.config.heartbeat_every,
                      "consecutive_failures": watch.failures, "shard_epoch": watch.epoch,
                      "latency_s": probe.latency_s if probe.ok else None},
            )  # fmt: skip
            if await self._publish(heartbeat):
                published.append(heartbeat)

        if watch.down_reported:
            state: SensorState = "down"
        else:
            state = "ok" if probe.ok else "failing"
        self.last_result = CycleResult(
            state=state, shard=watch.shard, primary=watch.primary.name,
            consecutive_failures=watch.failures, probe=probe, replica_info=info,
            published=published,
        )  # fmt: skip
        return self.last_result

    async def _ping_again(self, host: str, port: int) -> probes.ProbeResult:
        """The primary's PING, `REFUSAL_CONFIRM_AFTER` after the one that failed."""
        await asyncio.sleep(REFUSAL_CONFIRM_AFTER)
        probe = await probes.ping(host, port, self.config.ping_timeout,
                                  source_host=self.config.source_host)  # fmt: skip
        self.metrics.probed(probe)
        return probe

    def _idle(self, reason: str) -> CycleResult:
        if self._watch is not None or self.last_result is None or self.last_result.state != "idle":
            log.info("%s: idle: %s", self.name, reason)
        self._watch = None
        self._let_go_of_link()  # nothing to watch: hold no connection to a former primary
        self.last_result = CycleResult(state="idle", reason=reason)
        return self.last_result

    def _event(
        self, type: str, watch: _Watch, probe: ProbeResult, info: dict[str, Any] | None
    ) -> Event:
        info = info or {}
        data: dict[str, Any] = {
            "master_link_status": "down" if type == "RedisMasterDown" else "up",
            "replica_link_status": info.get("master_link_status"),
            "master_last_io_seconds_ago": info.get("master_last_io_seconds_ago"),
            "slave_repl_offset": info.get("slave_repl_offset"),
            "replica_master": probes.replica_master(info) if info else None,
            "consecutive_failures": watch.failures,
            "primary": watch.primary.name,
            "primary_address": watch.primary.address,
            "primary_peer_address": watch.primary.peer_address,
            "shard_epoch": watch.epoch,
            "replica": watch.replica.address,
            "replica_reachable": bool(info),
            "last_error": watch.last_error if type == "RedisMasterDown" else None,
            "evidence": ("refused" if watch.refused else "no answer")
            if type == "RedisMasterDown"
            else None,
        }
        if type == "RedisMasterRecovered":
            data["latency_s"] = probe.latency_s
        return new_event(
            type, environment=self.config.environment, region=self.config.region,
            service=self.config.service, shard=watch.shard, host=watch.primary.address,
            source=self.name, data=data,
            incident_key=incident_key(self.config.service, watch.shard, watch.primary.name,
                                      watch.epoch),
        )  # fmt: skip

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `interval` until `stop` is set. Errors are logged, never raised."""
        log.info("%s: watching the primary of replica %s every %.3g s (threshold %d)",
                 self.name, self.config.replica, self.config.interval,
                 self.config.threshold)  # fmt: skip
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.check_once()
            except Exception:
                stop_if_cancelled()
                log.exception("%s: check cycle failed; continuing", self.name)
            stop_if_cancelled()
            remaining = self.config.interval - (time.monotonic() - started)
            if remaining > 0:
                await self._sleep_unless_woken(stop, remaining)

    async def _sleep_unless_woken(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._woken.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._woken.clear()

    def _hold_link_to(self, host: str, port: int) -> None:
        """Keep one idle connection open to the watched primary (a new one when it changes)."""
        if self._link is not None:
            if self._link[0] == (host, port) and not self._link[1].done():
                return
            self._link[1].cancel()
        self._link = ((host, port), asyncio.ensure_future(self._hold_link(host, port)))

    def _let_go_of_link(self) -> None:
        if self._link is not None:
            self._link[1].cancel()
            self._link = None

    async def _hold_link(self, host: str, port: int) -> None:
        try:
            await self._hold_link_forever(host, port)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the cycles go on at their interval without it
            log.warning("%s: holding a link to %s:%d failed: %s", self.name, host, port, error)

    async def _hold_link_forever(self, host: str, port: int) -> None:
        local = (self.config.source_host, 0) if self.config.source_host else None
        while True:
            try:
                async with asyncio.timeout(self.config.ping_timeout):
                    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
            except (OSError, TimeoutError):
                stop_if_cancelled()
                await asyncio.sleep(self.config.interval)  # down or cut off: the cycles see it
                continue
            try:
                # Redis sends nothing to an idle client: this returns only when the host closes
                # or resets the connection (or the server's idle timeout does).
                await reader.read(1)
            except OSError:
                pass
            finally:
                writer.close()
            self._woken.set()
            # Then hold a new one, no sooner than a cycle: a link that keeps dropping must not
            # run the cycles (and so the threshold's count) faster than the interval.
            await asyncio.sleep(self.config.interval)

    async def aclose(self) -> None:
        tasks = [self._link[1]] if self._link is not None else []
        self._let_go_of_link()
        if self._following is not None:
            tasks.append(self._following)
        await cancel_until_done(tasks)
        if self._etcd is not None:
            await self._etcd.aclose()
        if self._owns_control:
            await self._control.aclose()

    async def __aenter__(self) -> Sensor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
