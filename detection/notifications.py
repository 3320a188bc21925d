"""Notifications and the pager policy: Slack incoming webhooks, PagerDuty Events API v2 and SMTP
email, chosen per service with team defaults, and the rule that the controller never holds a
page past its acknowledgement deadline. It lives beside the sensors because they page first;
the controller imports it (`lazarus_lite.audit.note_deliveries` files deliveries in the audit).

What it is for. Sensors page directly (PagerDuty `trigger`, dedup_key = the event's incident key)
and tell the controller in parallel. The controller, first responder in the escalation policy,
then acts on that page through a `Notifier`:

- `acknowledge` when its checks passed and it schedules the workflow;
- `resolve` when the workflow succeeded;
- `escalate` when no rule matched, a check failed, quorum was not reached or the workflow failed;
- `notify` for information that pages nobody.

Each call sends to the service's channels and returns one `Delivery` per message, successful or
not, so the caller can put it in the audit trail (`note_deliveries`). Sending never raises: a
failure is retried with bounded backoff (3 attempts within a few seconds by default) and then
recorded as a failed `Delivery`.

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

Not for: deciding anything (the controller does), sensors' own paging outside Python, the
PagerDuty REST API (reassigning incidents, escalation levels), or persistence: page state is per
process, so a controller node that dies while holding a page can no longer escalate it; set
PagerDuty's acknowledgement timeout on the service as the backstop for that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common import input_files
from common.validation import (
    LOCATION_CHARS,
    QUOTE_CHARS,
    HttpUrlText,
    bounded,
    quoted,
    validated,
)

log = logging.getLogger(__name__)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEDUP_KEY_MAX = 255  # PagerDuty's limit
SUMMARY_MAX = 1024  # PagerDuty's limit
CLIENT_NAME = "lazarus-lite"

ChannelName = Literal["slack", "pagerduty", "email"]
Severity = Literal["critical", "error", "warning", "info"]
EventAction = Literal["trigger", "acknowledge", "resolve"]
Purpose = Literal["page", "acknowledge", "resolve", "escalate", "notify"]
PageStatus = Literal["triggered", "acknowledged", "escalated", "resolved"]

CHANNELS: tuple[ChannelName, ...] = ("pagerduty", "slack", "email")
SEVERITIES: tuple[Severity, ...] = ("critical", "error", "warning", "info")


# -- deliveries -------------------------------------------------------------------------------
class Delivery(BaseModel):
    """What one message to one channel came to. `channel` is slack, pagerduty or email, or
    `notifier` when the pager policy refused to send (a late acknowledgement, no route)."""

    channel: str
    action: str  # pagerduty: its event_action; slack: "message"; email: "email"; notifier: verb
    ok: bool
    status: int | None = None  # HTTP status or SMTP reply code of the last attempt
    error: str | None = None
    attempts: int = 0
    target: str = ""  # where it went, without secrets (no webhook path, no routing key)
    at: float = Field(default_factory=time.time)  # when the outcome was known
    seconds: float = 0.0
    purpose: Purpose | None = None  # the Notifier call that sent it
    incident_key: str | None = None
    dedup_key: str | None = None

    def describe(self) -> str:
        what = f"{self.channel} {self.action}"
        if self.purpose:
            what = f"{self.purpose}: {what}"
        if self.ok:
            return f"{what} delivered" + (f" ({self.status})" if self.status else "")
        return f"{what} FAILED after {self.attempts} attempt(s): {self.error}"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: `attempts` in all, waiting `backoff`, then twice that, ... at most
    `max_backoff` between attempts; each attempt gives up after `timeout` seconds."""

    attempts: int = 3
    backoff: float = 0.25
    max_backoff: float = 2.0
    timeout: float = 3.0


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None = None, wait: float | None = None):
        super().__init__(message)
        self.status, self.wait = status, wait


class _Permanent(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


Attempt = Callable[[], Awaitable[tuple[int | None, dict[str, Any]]]]


async def _deliver(
    channel: str,
    action: str,
    target: str,
    retry: RetryPolicy,
    attempt: Attempt,
    *,
    redact: tuple[str, ...] = (),
) -> Delivery:
    """Run `attempt` until it succeeds, fails permanently or runs out of attempts; never raises
    (except cancellation). `attempt` returns (status, extra Delivery fields) on success."""
    started = time.monotonic()
    status: int | None = None
    error = "not attempted"
    tries = 0
    for tries in range(1, max(1, retry.attempts) + 1):
        wait: float | None = None
        try:
            status, extra = await asyncio.wait_for(attempt(), timeout=retry.timeout)
            return Delivery(
                channel=channel,
                action=action,
                ok=True,
                status=status,
                attempts=tries,
                target=target,
                seconds=round(time.monotonic() - started, 3),
                **extra,
            )
        except asyncio.CancelledError:
            raise
        except _Permanent as failure:
            status, error = failure.status, str(failure)
            break
        except _Retryable as failure:
            status, error, wait = failure.status, str(failure), failure.wait
        except (TimeoutError, httpx.TransportError, OSError, smtplib.SMTPServerDisconnected) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:  # a bug or an unexpected answer: record it, do not retry
            status, error = None, f"{type(exc).__name__}: {exc}"
            break
        if tries < retry.attempts:
            delay = min(retry.backoff * 2 ** (tries - 1), retry.max_backoff)
            if wait is not None:
                delay = min(max(delay, wait), retry.max_backoff)
            await asyncio.sleep(delay)
    for secret in redact:
        if secret:
            error = error.replace(secret, "***")
    log.warning("%s %s to %s failed after %d attempt(s): %s", channel, action, target, tries, error)
    return Delivery(
        channel=channel,
        action=action,
        ok=False,
        status=status,
        error=error,
        attempts=tries,
        target=target,
        seconds=round(time.monotonic() - started, 3),
    )


def _http_outcome(response: httpx.Response, what: str) -> None:
    """Raise the right failure for a non-2xx answer (429 and 5xx are worth retrying)."""
    if response.is_success:
        return
    body = response.text[:300].strip()
    message = f"{what} answered HTTP {response.status_code}" + (f": {body}" if body else "")
    if response.status_code == 429 or response.status_code >= 500:
        wait = None
        with contextlib.suppress(ValueError):
            wait = float(response.headers.get("retry-after", ""))
        raise _Retryable(message, response.status_code, wait)
    raise _Permanent(message, response.status_code)


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _HttpChannel:
    def __init__(self, http: httpx.AsyncClient | None, retry: RetryPolicy) -> None:
        self.retry = retry
        self._own_http = http is None
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.retry.timeout)
        return self._http

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None


# -- channels ---------------------------------------------------------------------------------
class SlackWebhook(_HttpChannel):
    """A Slack incoming webhook: POST {"text", "blocks"?}; Slack answers 200 "ok"."""

    name: ChannelName = "slack"

    def __init__(
        self, url: str, *, http: httpx.AsyncClient | None = None, retry: RetryPolicy = RetryPolicy()
    ) -> None:
        super().__init__(http, retry)
        self.url = url

    async def post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> Delivery:
        body: dict[str, Any] = {"text": text}
        if blocks:
            body["blocks"] = blocks

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            response = await self.http.post(self.url, json=body)
            _http_outcome(response, "slack webhook")
            return response.status_code, {}

        return await _deliver(
            "slack", "message", _host_of(self.url), self.retry, attempt, redact=(self.url,)
        )


class PagerDuty(_HttpChannel):
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
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        super().__init__(http, retry)
        self.routing_key = routing_key
        self.url = url

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
    ) -> Delivery:
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
        return await self.send_event("trigger", dedup_key, event)

    async def acknowledge(self, dedup_key: str) -> Delivery:
        return await self.send_event("acknowledge", dedup_key)

    async def resolve(self, dedup_key: str) -> Delivery:
        return await self.send_event("resolve", dedup_key)

    async def send_event(
        self, action: EventAction, dedup_key: str, extra: Mapping[str, Any] | None = None
    ) -> Delivery:
        target = _host_of(self.url)
        problem = None
        if not dedup_key or len(dedup_key) > DEDUP_KEY_MAX:
            problem = f"dedup_key must be 1..{DEDUP_KEY_MAX} characters"
        elif action == "trigger" and (
            not extra or extra.get("payload", {}).get("severity") not in SEVERITIES
        ):
            problem = "payload.severity must be critical, error, warning or info"
        if problem:
            return Delivery(
                channel="pagerduty",
                action=action,
                ok=False,
                error=problem,
                target=target,
                dedup_key=dedup_key,
            )
        body = {
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": dedup_key,
            **(extra or {}),
        }

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            response = await self.http.post(self.url, json=body)
            _http_outcome(response, "pagerduty")
            answered = dedup_key
            with contextlib.suppress(ValueError, AttributeError):
                answered = response.json().get("dedup_key") or dedup_key
            return response.status_code, {"dedup_key": answered}

        delivery = await _deliver(
            "pagerduty", action, target, self.retry, attempt, redact=(self.routing_key,)
        )
        return (
            delivery if delivery.dedup_key else delivery.model_copy(update={"dedup_key": dedup_key})
        )


class Email:
    """SMTP email through smtplib in a worker thread, with optional STARTTLS and login."""

    name: ChannelName = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        *,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.recipients = list(recipients)
        self.starttls, self.username, self.password = starttls, username, password
        self.retry = retry

    async def send(self, subject: str, body: str) -> Delivery:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        message.set_content(body)

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            return await asyncio.to_thread(self._send_blocking, message)

        target = f"smtp://{self.host}:{self.port} to {', '.join(self.recipients)}"
        return await _deliver(
            "email", "email", target, self.retry, attempt, redact=(self.password or "",)
        )

    def _send_blocking(self, message: EmailMessage) -> tuple[int | None, dict[str, Any]]:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.retry.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            text = f"recipients refused: {error.recipients}"
            if all(400 <= code < 500 for code in codes):
                raise _Retryable(text, codes[0] if codes else None) from None
            raise _Permanent(text, codes[0] if codes else None) from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPResponseException as error:
            text = f"SMTP {error.smtp_code}: {error.smtp_error!r}"
            if 400 <= error.smtp_code < 500:
                raise _Retryable(text, error.smtp_code) from None
            raise _Permanent(text, error.smtp_code) from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLError) as error:
            raise _Permanent(f"{type(error).__name__}: {error}") from None
        extra: dict[str, Any] = {}
        if refused:
            extra["error"] = f"some recipients refused: {refused}"
        return 250, extra


# -- configuration ----------------------------------------------------------------------------
class NotificationConfigError(ValueError):
    """The notification configuration is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SlackConfig(_Strict):
    webhook_url: HttpUrlText = Field(repr=False)


class PagerDutyConfig(_Strict):
    routing_key: str = Field(min_length=1, repr=False)
    url: HttpUrlText = PAGERDUTY_EVENTS_URL
    escalation_routing_key: str | None = Field(
        None,
        min_length=1,
        repr=False,
        description="an integration whose escalation policy starts with people",
    )
    severity: Severity = "critical"


_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"{quoted(value)} is not an email address")
    return value


class EmailConfig(_Strict):
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    password: str | None = Field(None, repr=False)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_address(v) for v in value]


def _unique(value: list[ChannelName] | None) -> list[ChannelName] | None:
    if value is not None:
        if not value:
            raise ValueError("name at least one channel (or leave it out for the default)")
        if len(set(value)) != len(value):
            raise ValueError(f"channels repeat: {quoted(value)}")
    return value


class TeamConfig(_Strict):
    slack: SlackConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    email: EmailConfig | None = None
    channels: list[ChannelName] | None = Field(
        None, description="the team's default channels; default: every channel configured"
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[ChannelName] | None) -> list[ChannelName] | None:
        return _unique(value)

    @property
    def configured(self) -> list[ChannelName]:
        return [c for c in CHANNELS if getattr(self, c) is not None]

    @property
    def default_channels(self) -> list[ChannelName]:
        return list(self.channels) if self.channels is not None else self.configured


class ServiceConfig(_Strict):
    team: str
    channels: list[ChannelName] | None = Field(None, description="default: the team's")
    ack_deadline_seconds: float | None = Field(None, gt=0, le=86400)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[ChannelName] | None) -> list[ChannelName] | None:
        return _unique(value)


class RetryConfig(_Strict):
    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(0.25, ge=0, le=30)
    max_backoff_seconds: float = Field(2.0, ge=0, le=60)
    timeout_seconds: float = Field(3.0, gt=0, le=60)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.attempts, self.backoff_seconds, self.max_backoff_seconds, self.timeout_seconds
        )


@dataclass(frozen=True)
class Route:
    """Where a service's notifications go."""

    service: str
    team: str
    channels: tuple[ChannelName, ...]
    ack_deadline: float


class NotificationConfig(_Strict):
    ack_deadline_seconds: float = Field(60.0, gt=0, le=86400)
    client: str = Field(CLIENT_NAME, min_length=1, description="who sends (PagerDuty client)")
    default_team: str | None = Field(None, description="for services not listed")
    retry: RetryConfig = RetryConfig()
    teams: dict[str, TeamConfig] = Field(min_length=1)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> NotificationConfig:
        for name, team in self.teams.items():
            if not team.configured:
                raise ValueError(
                    f"field 'teams.{name}': configure at least one channel "
                    f"(slack, pagerduty, email)"
                )
            missing = [c for c in team.default_channels if c not in team.configured]
            if missing:
                raise ValueError(
                    f"field 'teams.{name}.channels': {missing} not configured "
                    f"for the team (configured: {team.configured})"
                )
        if self.default_team is not None and self.default_team not in self.teams:
            raise ValueError(
                f"field 'default_team': unknown team {quoted(self.default_team)} "
                f"(teams: {sorted(self.teams)})"
            )
        for name, service in self.services.items():
            team = self.teams.get(service.team)
            if team is None:
                raise ValueError(
                    f"field 'services.{name}.team': unknown team {quoted(service.team)} "
                    f"(teams: {sorted(self.teams)})"
                )
            missing = [c for c in service.channels or [] if c not in team.configured]
            if missing:
                raise ValueError(
                    f"field 'services.{name}.channels': {missing} not configured "
                    f"for team '{service.team}' (configured: {team.configured})"
                )
        return self

    def route(self, service: str) -> Route | None:
        """The service's channels (its own choice, else its team's default); None when the
        service is not listed and there is no default team."""
        chosen = self.services.get(service)
        team_name = chosen.team if chosen else self.default_team
        if team_name is None:
            return None
        team = self.teams[team_name]
        channels = chosen.channels if chosen and chosen.channels else team.default_channels
        deadline = (
            chosen.ack_deadline_seconds
            if chosen and chosen.ack_deadline_seconds is not None
            else self.ack_deadline_seconds
        )
        return Route(service, team_name, tuple(channels), deadline)

    @classmethod
    def parse(cls, data: Any, *, origin: str = "notification config") -> NotificationConfig:
        return validated(cls, data, origin, error=NotificationConfigError)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, path: str, env: Mapping[str, str]) -> Any:
    """Replace ${NAME} in strings by the environment variable (keeps secrets out of files)."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise NotificationConfigError(
                    f"field '{bounded(path, LOCATION_CHARS)}': environment variable "
                    f"{bounded(name, QUOTE_CHARS)} is not set"
                )
            return env[name]

        return _ENV.sub(lookup, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}.{i}", env) for i, v in enumerate(value)]
    return value


def load_notification_config(
    path: str | Path, env: Mapping[str, str] | None = None
) -> NotificationConfig:
    """Load and validate a YAML notification config; ${NAME} is read from the environment.
    Raises NotificationConfigError naming the file and the field."""
    path = Path(path)
    data = input_files.load(
        path, expected="a mapping with 'teams' and 'services'", error=NotificationConfigError
    )
    try:
        data = _expand_env(data, "", os.environ if env is None else env)
    except NotificationConfigError as error:
        raise NotificationConfigError(f"{path}: {error}") from None
    return NotificationConfig.parse(data, origin=str(path))


# -- the notifier -----------------------------------------------------------------------------
@dataclass
class PageState:
    """What the notifier knows of one page (per incident key)."""

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

_TAGS: dict[Purpose, str] = {
    "page": "PAGE",
    "acknowledge": "ACKNOWLEDGED",
    "resolve": "RESOLVED",
    "escalate": "ESCALATED",
    "notify": "INFO",
}


def _epoch(value: float | datetime | None) -> float:
    if value is None:
        return time.time()
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _when(epoch: float | None) -> str:
    return (
        "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    )


class Notifier:
    """The controller's façade for notifications and the pager policy (see the module doc).

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
        self.retry = config.retry.policy()
        self.on_deadline = on_deadline
        self.watch = watch
        self.retention = retention
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self.retry.timeout)
        self._pages: dict[str, PageState] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._channels: dict[tuple[str, str], Any] = {}

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Notifier:
        return cls(load_notification_config(path), **options)

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._watchers.clear()
        if self._own_http:
            await self._http.aclose()

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
    ) -> PageState:
        """Start the deadline of a page a sensor triggered directly (call it on intake, with
        the event's occurred_at). An open page keeps its first trigger time: re-triggering
        never extends the deadline. Returns a copy of the state."""
        return replace(self._track(incident_key, service, summary, _epoch(triggered_at)))

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
    ) -> list[Delivery]:
        """Trigger a page (PagerDuty trigger with dedup_key = incident_key) and tell the
        service's other channels; starts the acknowledgement deadline."""
        state = self._track(incident_key, service, summary, time.time())
        route = self.config.route(service)
        if route is None:
            return [self._no_route("page", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            team = self.config.teams[route.team]
            assert team.pagerduty is not None
            sends.append(
                self._pagerduty(route.team).trigger(
                    incident_key,
                    f"{service}: {summary}",
                    source or service,
                    severity or team.pagerduty.severity,
                    component=component,
                    group=service,
                    event_class=event_class,
                    custom_details=details,
                    timestamp=state.triggered_at,
                    client=self.config.client,
                )
            )
        return await self._gather(
            "page",
            incident_key,
            [
                *sends,
                *self._messages(route, "page", incident_key, summary, details),
            ],
        )

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
                    f"{_when(state.escalated_at)} ({state.reason})",
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
            return [self._no_route("acknowledge", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            sends.append(self._pagerduty(route.team).acknowledge(incident_key))
        text = f"{state.summary or incident_key}: {note}" if note else state.summary
        return await self._gather(
            "acknowledge",
            incident_key,
            [
                *sends,
                *self._messages(
                    route,
                    "acknowledge",
                    incident_key,
                    text,
                    {
                        "deadline": f"resolve by {_when(state.deadline_at)} or it escalates",
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
            return [self._no_route("resolve", service, incident_key)]
        sends = []
        if "pagerduty" in route.channels:
            sends.append(self._pagerduty(route.team).resolve(incident_key))
            if state is not None and state.escalation_key:
                sends.append(
                    self._pagerduty(route.team, escalation=True).resolve(state.escalation_key)
                )
        text = summary or (state.summary if state else "") or "remediated"
        if escalated:
            text += " (resolved after it had been escalated)"
        return await self._gather(
            "resolve",
            incident_key,
            [
                *sends,
                *self._messages(route, "resolve", incident_key, text, details),
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
            return [self._no_route("escalate", service, incident_key)]
        summary = state.summary or incident_key
        custom = {
            **(details or {}),
            "incident_key": incident_key,
            "escalation_reason": reason,
            "triggered_at": _when(state.triggered_at),
            "acknowledged_at": _when(state.acknowledged_at),
            "escalated_by": self.config.client,
        }
        sends = []
        if "pagerduty" in route.channels:
            team = self.config.teams[route.team]
            assert team.pagerduty is not None
            title = f"ESCALATED {service}: {summary} ({reason})"
            if not new_alert:
                sends.append(
                    self._pagerduty(route.team).trigger(
                        incident_key,
                        title,
                        service,
                        team.pagerduty.severity,
                        group=service,
                        event_class="escalation",
                        custom_details=custom,
                        client=self.config.client,
                    )
                )
            if new_alert or team.pagerduty.escalation_routing_key:
                state.escalation_key = escalation_key(incident_key)
                sends.append(
                    self._pagerduty(route.team, escalation=True).trigger(
                        state.escalation_key,
                        title,
                        service,
                        "critical",
                        group=service,
                        event_class="escalation",
                        custom_details=custom,
                        client=self.config.client,
                    )
                )
        return await self._gather(
            "escalate",
            incident_key,
            [
                *sends,
                *self._messages(route, "escalate", incident_key, f"{summary}: {reason}", details),
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
            return [self._no_route("notify", service, incident_key)]
        return await self._gather(
            "notify", incident_key, self._messages(route, "notify", incident_key, text, details)
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
                f"acknowledged at {_when(state.acknowledged_at)} but not resolved within "
                f"the {limit:g}s deadline; the controller no longer holds the page"
            )
        log.warning("page %s: %s", state.incident_key, reason)
        return await self.escalate(state.incident_key, state.service, reason)

    # -- sending ---------------------------------------------------------------------------
    def _pagerduty(self, team_name: str, *, escalation: bool = False) -> PagerDuty:
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
        return channel

    def _messages(
        self,
        route: Route,
        purpose: Purpose,
        incident_key: str | None,
        text: str,
        details: Mapping[str, Any] | None,
    ) -> list[Awaitable[Delivery]]:
        team = self.config.teams[route.team]
        tag = _TAGS[purpose]
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
            headline = f"*[{tag}]* `{route.service}` {text}"
            if incident_key:
                headline += f"\nincident `{incident_key}`"
            context = [{"type": "mrkdwn", "text": f"*{k}*: {v}"} for k, v in facts.items()][:10]
            blocks = [
                {"type": "section", "text": {"type": "mrkdwn", "text": headline[:3000]}},
                {"type": "context", "elements": context},
            ]
            sends.append(slack.post(headline, blocks))
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
            subject = f"[{self.config.client}] {tag} {route.service}: {text}"
            if incident_key:
                subject += f" ({incident_key})"
            body = "\n".join(
                [
                    f"{tag}: {text}",
                    "",
                    *(f"{k}: {v}" for k, v in facts.items()),
                    f"at: {_when(time.time())}",
                    "",
                    f"-- {self.config.client}",
                ]
            )
            sends.append(channel.send(" ".join(subject.split())[:250], body))
        return sends

    async def _gather(
        self, purpose: Purpose, incident_key: str | None, sends: list[Awaitable[Delivery]]
    ) -> list[Delivery]:
        deliveries = await asyncio.gather(*sends)
        return [
            d.model_copy(update={"purpose": purpose, "incident_key": incident_key})
            for d in deliveries
        ]

    def _refused(self, purpose: Purpose, incident_key: str, reason: str) -> Delivery:
        log.warning("page %s: %s", incident_key, reason)
        return Delivery(
            channel="notifier",
            action=purpose,
            ok=False,
            error=reason,
            purpose=purpose,
            incident_key=incident_key,
        )

    def _no_route(self, purpose: Purpose, service: str, incident_key: str | None) -> Delivery:
        reason = (
            f"no notification route for service '{service}': list it under services "
            f"or set default_team"
        )
        log.error(reason)
        return Delivery(
            channel="notifier",
            action=purpose,
            ok=False,
            error=reason,
            purpose=purpose,
            incident_key=incident_key,
        )
