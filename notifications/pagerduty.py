"""The PagerDuty channel: alert events of the Events API v2 (trigger, acknowledge, resolve) and
its change events (something changed that is no problem: they page nobody), posted through the
shared retry loop, and the API's limits.

Not for: when to trigger, acknowledge or escalate (the controller's pager policy,
`lazarus_lite.paging`), or the PagerDuty REST API (reassigning incidents, escalation levels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import urlsplit

import httpx

from notifications.delivery import (
    ChannelName,
    Delivery,
    DeliveryPolicy,
    HttpChannel,
    http_outcome,
)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# Change events have their own endpoint beside the alert events' one.
CHANGE_EVENTS_PATH = "/v2/change/enqueue"
DEDUP_KEY_MAX = 255  # PagerDuty's limit
SUMMARY_MAX = 1024  # PagerDuty's limit
CLIENT_NAME = "lazarus-lite"

Severity = Literal["critical", "error", "warning", "info"]
EventAction = Literal["trigger", "acknowledge", "resolve"]

SEVERITIES: tuple[Severity, ...] = ("critical", "error", "warning", "info")


class Link(TypedDict):
    """One element of an alert's `links`: a URL and, optionally, the text to show for it."""

    href: str
    text: NotRequired[str]


class PagerDuty(HttpChannel):
    """PagerDuty Events API v2 (alert events). `trigger` needs payload.summary, .source and
    .severity; `acknowledge` and `resolve` send only routing_key, event_action and the same
    dedup_key, and only apply through the routing_key that triggered the alert. PagerDuty
    answers 202 {"status": "success", "message", "dedup_key"}; 400 is final, 429 and 5xx are
    retried."""

    name: ChannelName = "pagerduty"

    def __init__(
        self,
        routing_key: str,
        url: str = PAGERDUTY_EVENTS_URL,
        *,
        http: httpx.AsyncClient | None = None,
        retry: DeliveryPolicy = DeliveryPolicy(),
    ) -> None:
        super().__init__(url, http, retry)
        self.routing_key = routing_key

    async def trigger(
        self,
        dedup_key: str,
        summary: str,
        source: str,
        severity: Severity = "critical",
        *,
        component: str | None = None,
        group: str | None = None,
        event_class: str | None = None,
        custom_details: Mapping[str, Any] | None = None,
        timestamp: float | datetime | None = None,
        client: str | None = CLIENT_NAME,
        links: Sequence[Link] = (),
    ) -> Delivery:
        """`links` go on the alert as the Events API v2 `links` array (`href` required, `text`
        optional)."""
        payload: dict[str, Any] = {
            "summary": (summary or dedup_key)[:SUMMARY_MAX],
            "source": source,
            "severity": severity,
        }
        if timestamp is not None:
            when = (
                timestamp
                if isinstance(timestamp, datetime)
                else datetime.fromtimestamp(timestamp, UTC)
            )
            payload["timestamp"] = when.isoformat()
        optional = {"component": component, "group": group, "class": event_class}
        payload.update({k: v for k, v in optional.items() if v})
        if custom_details:
            payload["custom_details"] = dict(custom_details)
        event: dict[str, Any] = {"payload": payload}
        if client:
            event["client"] = client
        if links:
            event["links"] = [dict(link) for link in links]
        return await self.send_event("trigger", dedup_key, event)

    async def change(
        self,
        summary: str,
        source: str,
        *,
        custom_details: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
        links: Sequence[Link] = (),
    ) -> Delivery:
        """A change event (POST /v2/change/enqueue on the events URL's host: routing_key and
        payload.summary required, payload.source, .timestamp and .custom_details optional, and
        `links` beside the payload as in a trigger); PagerDuty answers 202 and shows it on the
        service's recent changes."""
        payload: dict[str, Any] = {"summary": summary[:SUMMARY_MAX], "source": source}
        if timestamp is not None:
            payload["timestamp"] = datetime.fromtimestamp(timestamp, UTC).isoformat()
        if custom_details:
            payload["custom_details"] = dict(custom_details)
        body: dict[str, Any] = {"routing_key": self.routing_key, "payload": payload}
        if links:
            body["links"] = [dict(link) for link in links]
        url = urlsplit(self.url)._replace(path=CHANGE_EVENTS_PATH, query="").geturl()

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            response = await self.http.post(url, json=body)
            http_outcome(response, "pagerduty change events")
            return response.status_code, {}

        return await self.deliver("change", attempt, redact=(self.routing_key,))

    async def acknowledge(self, dedup_key: str) -> Delivery:
        return await self.send_event("acknowledge", dedup_key)

    async def resolve(self, dedup_key: str) -> Delivery:
        return await self.send_event("resolve", dedup_key)

    async def send_event(
        self, action: EventAction, dedup_key: str, extra: Mapping[str, Any] | None = None
    ) -> Delivery:
        problem = None
        if not dedup_key or len(dedup_key) > DEDUP_KEY_MAX:
            problem = f"dedup_key must be 1..{DEDUP_KEY_MAX} characters"
        elif action == "trigger" and (
            not extra or extra.get("payload", {}).get("severity") not in SEVERITIES
        ):
            problem = "payload.severity must be critical, error, warning or info"
        if problem:
            return Delivery.refused(
                self.name, action, problem, target=self.target, dedup_key=dedup_key
            )
        body = {
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": dedup_key,
            **(extra or {}),
        }

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            response = await self.post_json(body, "pagerduty")
            answered = dedup_key
            with contextlib.suppress(ValueError, AttributeError):
                answered = response.json().get("dedup_key") or dedup_key
            return response.status_code, {"dedup_key": answered}

        delivery = await self.deliver(action, attempt, redact=(self.routing_key,))
        return (
            delivery if delivery.dedup_key else delivery.model_copy(update={"dedup_key": dedup_key})
        )
