"""The notifier: sends a service's notifications to its channels (Slack incoming webhooks,
PagerDuty Events API v2, SMTP email), chosen per service with team defaults.

Sensors page through it directly (`page`: a PagerDuty trigger whose dedup_key is the event's
incident key, and a message on the service's other channels) and tell the controller in
parallel; `notify` is information that pages nobody; `change` is a change that is no problem
(a chaos run started or passed): a PagerDuty change event and a message, paging nobody. The
controller's pager policy (`lazarus_lite.paging`) sends its acknowledgements, resolutions and
escalations through the same channels, with `pagerduty`, `messages` and `gather`.

Each call returns one `Delivery` per message, successful or not, so the caller can put it in
the audit trail (`lazarus_lite.audit.note_deliveries`). Sending never raises: a failure is
retried with bounded backoff (3 attempts within a few seconds by default) and then recorded as
a failed `Delivery`.

Not for: deciding anything, holding a page or escalating it (the controller's pager policy
does), sensors' own paging outside Python, or persistence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from notifications.config import NotificationConfig, Route
from notifications.delivery import Delivery, Purpose
from notifications.mail import Email
from notifications.pagerduty import Link, PagerDuty, Severity
from notifications.slack import SlackWebhook, cut_escaped, escape

# Block Kit: a text object (a section's text, a context element) is at most 3000 characters; a
# message with a longer one is refused with 400, for good.
SLACK_TEXT_LIMIT = 3000

log = logging.getLogger(__name__)

TAGS: dict[Purpose, str] = {
    "page": "PAGE",
    "acknowledge": "ACKNOWLEDGED",
    "resolve": "RESOLVED",
    "escalate": "ESCALATED",
    "notify": "INFO",
    "change": "CHANGE",
}


def when(epoch: float | None) -> str:
    """An epoch as the ISO time the messages show ("-" for none)."""
    return (
        "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    )


class Notifier:
    """Sends to the channels of a service's route (see the module doc). Every method returns
    the deliveries it made (empty when there was nothing to send); none raises for a channel
    failure."""

    def __init__(
        self, config: NotificationConfig, *, http: httpx.AsyncClient | None = None
    ) -> None:
        self.config = config
        self.retry = config.retry.policy()
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self.retry.timeout)
        self._channels: dict[tuple[str, str], SlackWebhook | PagerDuty | Email] = {}

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- what callers send -----------------------------------------------------------------
    async def page(
        self,
        incident_key: str,
        service: str,
        summary: str,
        details: Mapping[str, Any] | None = None,
        *,
        severity: Severity | None = None,
        source: str | None = None,
        component: str | None = None,
        event_class: str | None = None,
        triggered_at: float | None = None,
        event_id: str | None = None,
        links: Sequence[Link] = (),
    ) -> list[Delivery]:
        """Trigger a page (PagerDuty trigger with dedup_key = incident_key, stamped
        `triggered_at`, default now, linking to the audit record of `event_id` and to `links`)
        and tell the service's other channels (with `links`)."""
        route = self.config.route(service)
        if route is None:
            return [self.no_route("page", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            team = self.config.teams[route.team]
            assert team.pagerduty is not None
            sends.append(
                self.pagerduty(route.team).trigger(
                    incident_key,
                    f"{service}: {summary}",
                    source or service,
                    severity or team.pagerduty.severity,
                    component=component,
                    group=service,
                    event_class=event_class,
                    custom_details=details,
                    timestamp=time.time() if triggered_at is None else triggered_at,
                    client=self.config.client,
                    links=[*self.audit_links(event_id), *links],
                )
            )
        return await self.gather(
            "page",
            incident_key,
            [
                *sends,
                *self.messages(route, "page", incident_key, summary, details, links),
            ],
        )

    async def notify(
        self,
        service: str,
        text: str,
        details: Mapping[str, Any] | None = None,
        *,
        incident_key: str | None = None,
    ) -> list[Delivery]:
        """Information for the service's Slack and email channels; pages nobody."""
        route = self.config.route(service)
        if route is None:
            return [self.no_route("notify", service, incident_key)]
        return await self.gather(
            "notify", incident_key, self.messages(route, "notify", incident_key, text, details)
        )

    async def change(
        self,
        service: str,
        text: str,
        details: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        links: Sequence[Link] = (),
        messages: bool = True,
    ) -> list[Delivery]:
        """A change that is no problem: a PagerDuty change event (it pages nobody) and, unless
        `messages` is False, a message on the service's Slack and email channels, each with
        `links`."""
        route = self.config.route(service)
        if route is None:
            return [self.no_route("change", service, None)]
        sends = []
        if "pagerduty" in route.channels:
            sends.append(
                self.pagerduty(route.team).change(
                    f"{service}: {text}",
                    source or service,
                    custom_details=details,
                    timestamp=time.time(),
                    links=links,
                )
            )
        if messages:
            sends += self.messages(route, "change", None, text, details, links)
        return await self.gather("change", None, sends)

    def audit_links(self, event_id: str | None) -> list[Link]:
        """The PagerDuty link to the audit record of `event_id` on the controllers' API (none
        when the event or the config's `audit_url` is unknown)."""
        if event_id is None or self.config.audit_url is None:
            return []
        href = f"{self.config.audit_url.rstrip('/')}/v1/events/{quote(event_id, safe='')}"
        return [{"href": href, "text": f"audit record of event {event_id}"}]

    # -- the channels ----------------------------------------------------------------------
    def pagerduty(self, team_name: str, *, escalation: bool = False) -> PagerDuty:
        """The team's PagerDuty integration; `escalation` picks its escalation routing key
        (the same integration when it has none)."""
        config = self.config.teams[team_name].pagerduty
        assert config is not None
        key = (
            (config.escalation_routing_key or config.routing_key)
            if escalation
            else (config.routing_key)
        )
        cache_key = (team_name, "pagerduty-escalation" if escalation else "pagerduty")
        channel = self._channels.get(cache_key)
        if channel is None:
            channel = PagerDuty(key, config.url, http=self._http, retry=self.retry)
            self._channels[cache_key] = channel
        assert isinstance(channel, PagerDuty)
        return channel

    def messages(
        self,
        route: Route,
        purpose: Purpose,
        incident_key: str | None,
        text: str,
        details: Mapping[str, Any] | None,
        links: Sequence[Link] = (),
    ) -> list[Awaitable[Delivery]]:
        """The Slack and email messages of the route (not yet sent), `links` on lines of
        their own (in Slack, a block of their own)."""
        team = self.config.teams[route.team]
        tag = TAGS[purpose]
        sends: list[Awaitable[Delivery]] = []
        facts = {
            "service": route.service,
            "team": route.team,
            **({"incident": incident_key} if incident_key else {}),
            **{str(k): v for k, v in (details or {}).items()},
        }
        if "slack" in route.channels and team.slack is not None:
            slack = self._channels.get((route.team, "slack"))
            if slack is None:
                slack = SlackWebhook(team.slack.webhook_url, http=self._http, retry=self.retry)
                self._channels[(route.team, "slack")] = slack
            assert isinstance(slack, SlackWebhook)
            # Our own markup (*bold*, `code`) stays; every text from elsewhere is escaped.
            headline = f"*[{tag}]* `{escape(route.service)}` {escape(text)}"
            if incident_key:
                headline += f"\nincident `{escape(incident_key)}`"
            # Slack's link markup, <URL|text>, both escaped; in a block of their own, so a
            # headline cut to the section limit never cuts a link.
            link_lines = whole_lines_within(
                [f"<{escape(link['href'])}|{escape(link.get('text') or link['href'])}>"
                 for link in links],
                SLACK_TEXT_LIMIT,
            )  # fmt: skip
            context = [
                {"type": "mrkdwn",
                 "text": cut_escaped(f"*{escape(k)}*: {escape(v)}", SLACK_TEXT_LIMIT)}
                for k, v in facts.items()
            ][:10]  # fmt: skip
            section = cut_escaped(headline, SLACK_TEXT_LIMIT)
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": section}}]
            if link_lines:
                blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": link_lines}})
            blocks.append({"type": "context", "elements": context})
            # The notification's text (Slack shows it where blocks cannot be) is not cut.
            fallback = f"{headline}\n{link_lines}" if link_lines else headline
            sends.append(slack.post(fallback, blocks))
        if "email" in route.channels and team.email is not None:
            mail = team.email
            channel = self._channels.get((route.team, "email"))
            if channel is None:
                channel = Email(
                    mail.smtp_host,
                    mail.smtp_port,
                    mail.sender,
                    list(mail.to),
                    mail.starttls,
                    mail.username,
                    mail.password,
                    retry=self.retry,
                )
                self._channels[(route.team, "email")] = channel
            assert isinstance(channel, Email)
            subject = f"[{self.config.client}] {tag} {route.service}: {text}"
            if incident_key:
                subject += f" ({incident_key})"
            body = "\n".join(
                [
                    f"{tag}: {text}",
                    "",
                    *(f"{k}: {v}" for k, v in facts.items()),
                    *(f"{link.get('text') or 'link'}: {link['href']}" for link in links),
                    f"at: {when(time.time())}",
                    "",
                    f"-- {self.config.client}",
                ]
            )
            sends.append(channel.send(" ".join(subject.split())[:250], body))
        return sends

    async def gather(
        self, purpose: Purpose, incident_key: str | None, sends: list[Awaitable[Delivery]]
    ) -> list[Delivery]:
        """Send concurrently; each delivery is marked with the call and the incident."""
        deliveries = await asyncio.gather(*sends)
        return [
            d.model_copy(update={"purpose": purpose, "incident_key": incident_key})
            for d in deliveries
        ]

    def no_route(self, purpose: Purpose, service: str, incident_key: str | None) -> Delivery:
        """The failed delivery of a call for a service that has no route."""
        reason = (
            f"no notification route for service '{service}': list it under services "
            f"or set default_team"
        )
        log.error(reason)
        return Delivery.refused(
            "notifier", purpose, reason, purpose=purpose, incident_key=incident_key
        )


def whole_lines_within(lines: Sequence[str], limit: int) -> str:
    """`lines` joined, as many whole ones as `limit` characters hold with a note of how many
    were left out (a link cut in half is no link)."""
    whole = "\n".join(lines)
    if len(whole) <= limit:
        return whole
    kept: list[str] = []
    size = 0
    for count, line in enumerate(lines):
        left = len(lines) - count
        needed = size + len(line) + (1 if kept else 0)
        # Room for this line and, unless it is the last, for the note after it.
        if needed > limit or (left > 1 and needed + len(f"\n(and {left - 1} more)") > limit):
            return "\n".join([*kept, f"(and {left} more)"])
        kept.append(line)
        size = needed
    return "\n".join(kept)
