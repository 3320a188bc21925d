"""Safety gates: the reasons the controller declines to act even when a rule matches and the
checks pass (Lazarus: "know when not to act"). Each gate answers with a `GateStop` naming
itself and the reason, or None; the controller records the stop in the audit trail and hands
the event to a person.

- stale events (older than `max_event_age`) are dropped, and so are events dated further ahead
  than `max_event_ahead` (refused at intake already: this is the backstop of any other way in);
- a per-service rate limit: more than N incidents of one service in a rolling window suspends
  that service's actions until the rate falls;
- a circuit breaker per region: more than N distinct failing services in the window suspends
  every action in the region, and closes by itself when the rate falls;
- a kill switch per event category (failover, host_replacement, scaling, or `all`), checked by
  the workflow engine right before a workflow starts and before each state-changing step;
- a control realm: a node outside the realm it controls refuses to execute;
- shadow (notification-only) mode per service or globally: decide, record, do not act;
- the shard keeper's gates (`KeeperGates`): it acts on no event, but the control realm, the kill
  switch and shadow mode stop its changes as they stop a workflow's.
All state is in the coordination store, so every node sees the same gates.
Not for: precondition checks about the failing entity (see `checks`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from detection.events import Event
from lazarus_lite.coordination.interface import CoordinationStore, SafetyFlags, SlidingWindows
from lazarus_lite.settings import ControllerSettings

ALL = "*"


@dataclass(frozen=True)
class GateStop:
    gate: str  # stale | rate_limit | circuit_breaker | kill_switch | control_realm | shadow
    reason: str
    data: dict[str, Any] | None = None


def is_failure(event: Event) -> bool:
    """Events that report something broken (what rate limits and breakers count). The
    controllers' own reports about the watchers (a silent sensor, a shard left unwritable or
    short of a replica) are not: they must never use up the budget a real failover needs."""
    return event.type not in {
        "SensorHeartbeat",
        "RedisMasterRecovered",
        "SensorSilent",
        "ShardUnwritable",
        "ShardDegraded",
    }


class StaleEventFilter:
    def __init__(self, max_age_seconds: float, max_ahead_seconds: float) -> None:
        self.max_age = max_age_seconds
        self.max_ahead = max_ahead_seconds

    def check(self, event: Event) -> GateStop | None:
        age = event.age_seconds()
        if -age > self.max_ahead:
            # Its age would never pass max_age: it must not be acted on as ever fresh.
            return GateStop(
                "stale",
                f"event is dated {-age:,.0f} s ahead of this node's clock; events dated more "
                f"than {self.max_ahead:g} s ahead are not acted on",
            )
        if age > self.max_age:
            return GateStop(
                "stale",
                f"event is {age:.0f} s old; events older than {self.max_age:g} s are not acted on",
            )
        return None


class ServiceRateLimit:
    """Incidents per service over a rolling window (of their incident keys)."""

    def __init__(
        self,
        windows: SlidingWindows,
        *,
        window: float,
        threshold: int,
        overrides: dict[str, int] | None = None,
    ) -> None:
        self._windows = windows
        self.window = window
        self.threshold = threshold
        self.overrides = overrides or {}

    async def record(self, event: Event) -> int:
        """Count this incident; returns the service's incidents within the window."""
        return await self._windows.record(
            "service_incidents", event.service, event.dedup_key, self.window
        )

    async def count(self, service: str) -> int:
        """The service's incidents within the window now."""
        return len(await self._windows.members("service_incidents", service, self.window))

    async def check(self, event: Event, count: int) -> GateStop | None:
        limit = self.overrides.get(event.service, self.threshold)
        if count > limit:
            return GateStop(
                "rate_limit",
                f"{count} incidents of {event.service} within "
                f"{self.window:g} s exceed its limit of {limit}: actions on "
                f"{event.service} are suspended",
                {"count": count, "limit": limit},
            )
        return None


class CircuitBreaker:
    """Distinct failing services per region in a rolling window; open above the threshold."""

    def __init__(self, windows: SlidingWindows, *, window: float, threshold: int) -> None:
        self._windows = windows
        self.window = window
        self.threshold = threshold

    async def record(self, event: Event) -> None:
        """Count the event's service as failing in its region."""
        await self._windows.record("failing_services", event.region, event.service, self.window)

    async def failing_services(self, region: str) -> list[str]:
        return await self._windows.members("failing_services", region, self.window)

    async def state(self, region: str) -> dict[str, Any]:
        failing = await self.failing_services(region)
        return {
            "region": region,
            "open": len(failing) > self.threshold,
            "failing": failing,
            "threshold": self.threshold,
            "window_seconds": self.window,
        }

    async def regions(self) -> list[str]:
        return await self._windows.names("failing_services")

    async def check(self, event: Event) -> GateStop | None:
        state = await self.state(event.region)
        if state["open"]:
            return GateStop(
                "circuit_breaker",
                f"circuit breaker open in {event.region}: "
                f"{len(state['failing'])} services failing within "
                f"{self.window:g} s (threshold {self.threshold}): "
                f"{', '.join(state['failing'])}",
                state,
            )
        return None


class KillSwitch:
    def __init__(self, flags: SafetyFlags) -> None:
        self._flags = flags

    async def set(self, category: str, enabled: bool, *, by: str = "", reason: str = "") -> None:
        """Switch one category (or `*`: all) on or off; switching `*` off clears every one."""
        if not enabled and category == ALL:
            await self._flags.release_every_kill_switch()
        elif enabled:
            info = {"enabled_at": time.time(), "by": by, "reason": reason}
            await self._flags.engage_kill_switch(category, info)
        else:
            await self._flags.release_kill_switch(category)

    async def status(self) -> dict[str, dict[str, Any]]:
        return await self._flags.kill_switches()

    async def check(
        self, category: str, engaged: dict[str, dict[str, Any]] | None = None
    ) -> GateStop | None:
        """`engaged`: the switches as just read with other keys (`CoordinationStore.step_reads`);
        None: read them here."""
        if engaged is None:
            engaged = await self._flags.kill_switches()
        covering = self.covering(category, engaged)
        if covering is None:
            return None
        scope, info = covering
        return GateStop(
            "kill_switch",
            f"kill switch on for {scope}: {category} actions are suspended; escalating",
            info,
        )

    @staticmethod
    def covering(
        category: str, engaged: dict[str, dict[str, Any]]
    ) -> tuple[str, dict[str, Any]] | None:
        """The switch among `engaged` that covers `category` (its own, else `all`): what it
        covers, with the reason given, and its record; None if none does."""
        for name in (category, ALL):
            info = engaged.get(name)
            if info is not None:
                scope = "all categories" if name == ALL else category
                why = f" ({info['reason']})" if info.get("reason") else ""
                return f"{scope}{why}", info
        return None


class ShadowMode:
    def __init__(self, flags: SafetyFlags) -> None:
        self._flags = flags

    async def set(self, service: str, enabled: bool) -> None:
        """Shadow one service (or `*`: all) or not; switching `*` off clears every one."""
        if not enabled and service == ALL:
            await self._flags.clear_shadow()
        else:
            await self._flags.set_shadow(service, enabled)

    async def services(self) -> list[str]:
        return await self._flags.shadowed()

    async def check(self, service: str) -> GateStop | None:
        shadowed = set(await self._flags.shadowed())
        if service in shadowed or ALL in shadowed:
            scope = "globally" if ALL in shadowed else f"for {service}"
            return GateStop("shadow", f"notification-only mode {scope}: decided, not acted on")
        return None


class ControlRealm:
    """Which regions this deployment controls, and where this node is."""

    def __init__(self, node_region: str, realm: list[str] | None) -> None:
        self.node_region = node_region
        self.realm = realm

    def check(self, event_region: str | None = None) -> GateStop | None:
        if self.realm is None:
            return None
        if self.node_region not in self.realm:
            return GateStop(
                "control_realm",
                f"this node (region {self.node_region}) is outside "
                f"the control realm {self.realm}: it does not execute actions",
            )
        if event_region is not None and event_region not in self.realm:
            return GateStop(
                "control_realm",
                f"event region {event_region} is outside the control realm {self.realm}",
            )
        return None


# The kill switch category of the shard keeper's changes: they are a failover's (roles, the
# topology, under the failover's shard lock), so an operator who suspends failovers (or `all`)
# for maintenance has the keeper leave the shards alone too.
KEEPER_CATEGORY = "failover"


class KeeperGates:
    """What the shard keeper consults before each change it would make. It acts on no event, so
    the gates that count events (stale, rate limit, breaker) do not apply; the control realm, the
    kill switch (`KEEPER_CATEGORY` or `all`) and shadow mode for the shard's service do."""

    def __init__(self, flags: SafetyFlags, realm: ControlRealm | None = None) -> None:
        self.kill_switch = KillSwitch(flags)
        self.shadow = ShadowMode(flags)
        self.realm = realm

    async def check(self, service: str) -> GateStop | None:
        """The first gate that stops the keeper changing `service`'s shards, or None."""
        stop = self.realm.check() if self.realm is not None else None
        if stop is not None:
            return stop
        covering = KillSwitch.covering(KEEPER_CATEGORY, await self.kill_switch.status())
        if covering is not None:
            scope, info = covering
            return GateStop("kill_switch", f"kill switch on for {scope}", info)
        return await self.shadow.check(service)


class SafetyGates:
    """The controller's gates, consulted where it decides: `stale` on intake, `count_failure`
    then `before_action` once a rule matched, `shadow` after the quorum, and
    `before_execution` right before a workflow starts and before each state-changing step."""

    def __init__(self, settings: ControllerSettings, store: CoordinationStore) -> None:
        self.stale = StaleEventFilter(settings.max_event_age, settings.max_event_ahead)
        self.rate_limit = ServiceRateLimit(
            store.windows,
            window=settings.rate_limit_window,
            threshold=settings.rate_limit_threshold,
            overrides=settings.rate_limit_overrides,
        )
        self.breaker = CircuitBreaker(
            store.windows, window=settings.breaker_window, threshold=settings.breaker_threshold
        )
        self.kill_switch = KillSwitch(store.flags)
        self.shadow = ShadowMode(store.flags)
        self.realm = ControlRealm(settings.region, settings.control_realm)
        self.keeper = KeeperGates(store.flags, self.realm)

    async def count_failure(self, event: Event) -> int:
        """Count a failure against its service's rate limit and its region's breaker; returns
        the service's incidents within the window (0 for an event that is no failure)."""
        if not is_failure(event):
            return 0
        # Two windows of their own keys: noted side by side (on etcd each note is a raft write,
        # on a failover's decision path).
        incidents, _ = await asyncio.gather(
            self.rate_limit.record(event), self.breaker.record(event)
        )
        return incidents

    async def before_action(self, event: Event, incidents: int) -> GateStop | None:
        """The first gate that stops acting on `event` (the regional breaker, then the
        service's rate limit, then the control realm), or None."""
        # The regional breaker first: in an outage of many services every event escalates.
        for stop in (
            await self.breaker.check(event),
            await self.rate_limit.check(event, incidents),
            self.realm.check(event.region),
        ):
            if stop is not None:
                return stop
        return None

    async def before_execution(
        self, category: str, engaged: dict[str, dict[str, Any]] | None = None
    ) -> GateStop | None:
        """The seed's kill switch placement: one check, right before execution (`engaged`: the
        kill switches already read, as `KillSwitch.check` takes them)."""
        return self.realm.check() or await self.kill_switch.check(category, engaged)
