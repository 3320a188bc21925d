"""The controller's pager policy: it holds a page only until its acknowledgement deadline, then
hands it to a person. A sensor pages directly; the controller, first responder in the escalation
policy, then acts on that page through a `Pager`:

- `acknowledge` when its checks passed and it schedules the workflow;
- `resolve` when the workflow succeeded;
- `escalate` when no rule matched, a check failed, quorum was not reached or the workflow failed.

It sends none of the page itself (the sensor did, through `Notifier.page`); information that
pages nobody goes through `Notifier.notify` (`Pager.notifier`).

Each call returns the deliveries of the channels (`notifications.Notifier` sends them), plus a
failed `Delivery` from channel "notifier" when the policy refused to send (a late
acknowledgement, no route), so the caller can put them in the audit trail.

The acknowledgement deadline (60 s by default, `ack_deadline_seconds`, per service if needed).
Without the controller, PagerDuty escalates an unacknowledged page to the on-call engineer when
the first responder's 60 s run out. The controller acknowledging a page stops that timer, so an
acknowledgement is a promise: "I am fixing this". Our interpretation of "never hold a page past
the deadline" is that the controller may never delay the engineer beyond what PagerDuty alone
would have done: by `triggered_at + deadline` the incident is either resolved, or a person has
been handed it. Concretely, for a page triggered at T:

- no decision (neither acknowledged nor escalated) by T + deadline: escalated by the watcher
  (PagerDuty also escalates it by itself, since nobody acknowledged it);
- acknowledged, but not resolved by T + deadline: escalated by the watcher;
- an acknowledgement that arrives after T + deadline is refused (never sent: it would silence a
  page that has already gone to a person) and turned into an escalation;
- after an escalation, the controller never acknowledges that page again; it still resolves it
  if its workflow later succeeds.

The deadline runs from the trigger, not from the acknowledgement; re-triggering an open page does
not extend it. A service whose remediation legitimately takes longer (a host replacement) sets
its own `ack_deadline_seconds`.

How an escalation reaches a person through the Events API alone. An alert that is still
triggered is re-triggered with the same dedup_key and the escalation reason in
`custom_details`: it stays open and PagerDuty's escalation policy hands it on. An acknowledged
alert cannot be un-acknowledged through Events API v2, and PagerDuty sends no notification for
triggers on an acknowledged alert, so escalating one triggers a new alert whose dedup_key is the
incident key + "/escalated" (`escalation_key`), carrying the original key; the acknowledged alert
is left as it is (it is not falsely resolved). When the team configures an
`escalation_routing_key` (an integration whose escalation policy starts with people, not with
the controller), every escalation also triggers that new alert there at once. `resolve` resolves
both keys.

Not for: deciding anything (the controller does), the channels themselves (`notifications`),
the PagerDuty REST API (reassigning incidents, escalation levels), or persistence: page state is
per process, so a controller node that dies while holding a page can no longer escalate it; set
PagerDuty's acknowledgement timeout on the service as the backstop for that case.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import httpx

from notifications.config import NotificationConfig
from notifications.delivery import Delivery, Purpose
from notifications.notifier import Notifier, when
from notifications.pagerduty import DEDUP_KEY_MAX

log = logging.getLogger(__name__)

PageStatus = Literal["triggered", "acknowledged", "escalated", "resolved"]


@dataclass
class PageState:
    """What the pager knows of one page (per incident key)."""

    incident_key: str
    service: str
    summary: str
    triggered_at: float
    deadline_at: float
    status: PageStatus = "triggered"
    acknowledged_at: float | None = None
    escalated_at: float | None = None
    resolved_at: float | None = None
    escalation_key: str | None = None
    reason: str = ""
    event_id: str | None = None  # the event whose audit record the page links to

    @property
    def held(self) -> bool:
        """The page waits on the controller (undecided, or acknowledged and not resolved)."""
        return self.status in ("triggered", "acknowledged")


def escalation_key(incident_key: str) -> str:
    """The dedup_key of the alert that hands an acknowledged page to a person."""
    key = f"{incident_key}/escalated"
    if len(key) <= DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(incident_key.encode()).hexdigest()[:16]
    return f"{incident_key[: DEDUP_KEY_MAX - 28]}/{digest}/escalated"


DeadlineHook = Callable[[PageState, list[Delivery]], Awaitable[None]]


def _epoch(value: float | datetime | None) -> float:
    if value is None:
        return time.time()
    return value.timestamp() if isinstance(value, datetime) else float(value)


class Pager:
    """The controller's pager policy over a `Notifier` (see the module doc).

    Every method returns the deliveries it made (empty when there was nothing to send); none
    raises for a channel failure. Deadline escalations made by the background watcher (on by
    default; `watch=False` leaves it to the caller's `enforce_ack_deadline`) are handed to
    `on_deadline(state, deliveries)` so they too reach the audit trail."""

    def __init__(
        self,
        config: NotificationConfig,
        *,
        http: httpx.AsyncClient | None = None,
        on_deadline: DeadlineHook | None = None,
        watch: bool = True,
        retention: float = 6 * 3600.0,
    ) -> None:
        self.config = config
        self.notifier = Notifier(config, http=http)
        self.on_deadline = on_deadline
        self.watch = watch
        self.retention = retention
        self._pages: dict[str, PageState] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Pager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._watchers.clear()
        await self.notifier.aclose()

    # -- state ---------------------------------------------------------------------------
    def page_state(self, incident_key: str) -> PageState | None:
        """A copy of what is known of the page."""
        state = self._pages.get(incident_key)
        return None if state is None else replace(state)

    def track(
        self,
        incident_key: str,
        service: str,
        *,
        summary: str = "",
        triggered_at: float | datetime | None = None,
        event_id: str | None = None,
    ) -> PageState:
        """Start the deadline of a page a sensor triggered directly (call it on intake, with
        the event's occurred_at and id). An open page keeps its first trigger time:
        re-triggering never extends the deadline. Returns a copy of the state."""
        state = self._track(incident_key, service, summary, _epoch(triggered_at))
        state.event_id = state.event_id or event_id
        return replace(state)

    def _track(
        self, incident_key: str, service: str, summary: str, triggered_at: float
    ) -> PageState:
        self._prune()
        state = self._pages.get(incident_key)
        if state is not None and state.status != "resolved":
            if summary and not state.summary:
                state.summary = summary
            return state
        route = self.config.route(service)
        deadline = route.ack_deadline if route else self.config.ack_deadline_seconds
        state = PageState(incident_key, service, summary, triggered_at, triggered_at + deadline)
        self._pages[incident_key] = state
        if self.watch:
            self._start_watcher(state)
        return state

    def _prune(self) -> None:
        cutoff = time.time() - self.retention
        for key, state in list(self._pages.items()):
            if not state.held and (state.resolved_at or state.escalated_at or 0) < cutoff:
                del self._pages[key]

    def _start_watcher(self, state: PageState) -> None:
        previous = self._watchers.pop(state.incident_key, None)
        if previous is not None and previous is not asyncio.current_task():
            previous.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the caller enforces the deadline itself
            return
        task = loop.create_task(self._watch(state), name=f"ack-deadline:{state.incident_key}")
        self._watchers[state.incident_key] = task

    def _stop_watcher(self, incident_key: str) -> None:
        task = self._watchers.get(incident_key)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            del self._watchers[incident_key]

    async def _watch(self, state: PageState) -> None:
        try:
            deliveries = await self._enforce(state)
            if deliveries and self.on_deadline is not None:
                try:
                    await self.on_deadline(replace(state), deliveries)
                except Exception:
                    log.exception("on_deadline hook failed for %s", state.incident_key)
        finally:
            if self._watchers.get(state.incident_key) is asyncio.current_task():
                del self._watchers[state.incident_key]

    # -- the pager policy ------------------------------------------------------------------
    async def acknowledge(
        self,
        incident_key: str,
        service: str,
        note: str = "checks passed; remediation workflow scheduled",
    ) -> list[Delivery]:
        """Acknowledge the page: only while it is undecided and before its deadline. A late
        acknowledgement is refused and escalated instead; one after an escalation is refused;
        a repeated one sends nothing."""
        state = self._pages.get(incident_key)
        if state is None or state.status == "resolved":
            log.warning("acknowledging untracked page %s: its deadline starts now", incident_key)
            state = self._track(incident_key, service, "", time.time())
        if state.status == "acknowledged":
            return []
        if state.status == "escalated":
            return [
                self._refused(
                    "acknowledge",
                    incident_key,
                    f"not acknowledged: the page was escalated at "
                    f"{when(state.escalated_at)} ({state.reason})",
                )
            ]
        now = time.time()
        if now >= state.deadline_at:
            late = now - state.triggered_at
            refusal = self._refused(
                "acknowledge",
                incident_key,
                f"not acknowledged: {late:.1f}s after the page, past the "
                f"{state.deadline_at - state.triggered_at:g}s deadline",
            )
            escalation = await self.escalate(
                incident_key,
                service,
                f"the controller was ready to remediate only {late:.1f}s after the page, past "
                f"the acknowledgement deadline",
            )
            return [refusal, *escalation]
        state.status, state.acknowledged_at = "acknowledged", now
        route = self.config.route(service)
        if route is None:
            return [self.notifier.no_route("acknowledge", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            sends.append(self.notifier.pagerduty(route.team).acknowledge(incident_key))
        text = f"{state.summary or incident_key}: {note}" if note else state.summary
        return await self.notifier.gather(
            "acknowledge",
            incident_key,
            [
                *sends,
                *self.notifier.messages(
                    route,
                    "acknowledge",
                    incident_key,
                    text,
                    {
                        "deadline": f"resolve by {when(state.deadline_at)} or it escalates",
                    },
                ),
            ],
        )

    async def resolve(
        self,
        incident_key: str,
        service: str,
        summary: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> list[Delivery]:
        """Resolve the page (and its escalation alert, if any): the workflow succeeded."""
        state = self._pages.get(incident_key)
        escalated = state is not None and state.status == "escalated"
        if state is not None:
            state.status, state.resolved_at = "resolved", time.time()
            self._stop_watcher(incident_key)
        route = self.config.route(service)
        if route is None:
            return [self.notifier.no_route("resolve", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            sends.append(self.notifier.pagerduty(route.team).resolve(incident_key))
            if state is not None and state.escalation_key:
                sends.append(
                    self.notifier.pagerduty(route.team, escalation=True).resolve(
                        state.escalation_key
                    )
                )
        text = summary or (state.summary if state else "") or "remediated"
        if escalated:
            text += " (resolved after it had been escalated)"
        return await self.notifier.gather(
            "resolve",
            incident_key,
            [
                *sends,
                *self.notifier.messages(route, "resolve", incident_key, text, details),
            ],
        )

    async def escalate(
        self, incident_key: str, service: str, reason: str, details: Mapping[str, Any] | None = None
    ) -> list[Delivery]:
        """Hand the page to a person: no rule, a check failed, no quorum, the workflow failed,
        a gate stopped the action, or the deadline passed. An undecided page is re-triggered
        (same dedup_key) with the reason and stays triggered; an acknowledged one gets a new
        alert under `escalation_key(incident_key)`. The channels get a message either way."""
        now = time.time()
        state = self._pages.get(incident_key)
        if state is None or state.status == "resolved":
            state = self._track(incident_key, service, "", now)
        # an acknowledged alert notifies nobody on a new trigger: it needs an alert of its own
        new_alert = state.status == "acknowledged" or state.escalation_key is not None
        state.status, state.escalated_at, state.reason = "escalated", now, reason
        self._stop_watcher(incident_key)
        route = self.config.route(service)
        if route is None:
            return [self.notifier.no_route("escalate", service, incident_key)]
        summary = state.summary or incident_key
        custom = {
            **(details or {}),
            "incident_key": incident_key,
            "escalation_reason": reason,
            "triggered_at": when(state.triggered_at),
            "acknowledged_at": when(state.acknowledged_at),
            "escalated_by": self.config.client,
        }
        sends = []
        if "pagerduty" in route.channels:
            team = self.config.teams[route.team]
            assert team.pagerduty is not None
            title = f"ESCALATED {service}: {summary} ({reason})"
            if not new_alert:
                sends.append(
                    self.notifier.pagerduty(route.team).trigger(
                        incident_key,
                        title,
                        service,
                        team.pagerduty.severity,
                        group=service,
                        event_class="escalation",
                        custom_details=custom,
                        client=self.config.client,
                        links=self.notifier.audit_links(state.event_id),
                    )
                )
            if new_alert or team.pagerduty.escalation_routing_key:
                state.escalation_key = escalation_key(incident_key)
                sends.append(
                    self.notifier.pagerduty(route.team, escalation=True).trigger(
                        state.escalation_key,
                        title,
                        service,
                        "critical",
                        group=service,
                        event_class="escalation",
                        custom_details=custom,
                        client=self.config.client,
                        links=self.notifier.audit_links(state.event_id),
                    )
                )
        return await self.notifier.gather(
            "escalate",
            incident_key,
            [
                *sends,
                *self.notifier.messages(
                    route, "escalate", incident_key, f"{summary}: {reason}", details
                ),
            ],
        )

    async def enforce_ack_deadline(self, incident_key: str) -> list[Delivery]:
        """Wait until the page's deadline; if the controller still holds it then (undecided, or
        acknowledged and not resolved), escalate it. Returns the escalation's deliveries, or []
        when the page was resolved or escalated in time (or is unknown)."""
        state = self._pages.get(incident_key)
        return [] if state is None else await self._enforce(state)

    async def _enforce(self, state: PageState) -> list[Delivery]:
        while state.held and (left := state.deadline_at - time.time()) > 0:
            await asyncio.sleep(min(left, 1.0))  # wakes up soon after a resolve
        if not state.held or self._pages.get(state.incident_key) is not state:
            return []
        limit = state.deadline_at - state.triggered_at
        if state.status == "triggered":
            reason = f"no decision within the {limit:g}s acknowledgement deadline"
        else:
            reason = (
                f"acknowledged at {when(state.acknowledged_at)} but not resolved within "
                f"the {limit:g}s deadline; the controller no longer holds the page"
            )
        log.warning("page %s: %s", state.incident_key, reason)
        return await self.escalate(state.incident_key, state.service, reason)

    # -- refusals ------------------------------------------------------------------------
    def _refused(self, purpose: Purpose, incident_key: str, reason: str) -> Delivery:
        log.warning("page %s: %s", incident_key, reason)
        return Delivery.refused(
            "notifier", purpose, reason, purpose=purpose, incident_key=incident_key
        )
