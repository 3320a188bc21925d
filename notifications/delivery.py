"""How one message reaches one channel: the `Delivery` record every send returns, the bounded
`DeliveryPolicy`, and `deliver`, the retry loop the channels share (with the HTTP channels' base
and how an HTTP answer becomes a retryable or a permanent failure).

Not for: what a message says or which channels get it (see `notifier`), nor any one channel's
protocol (`slack`, `pagerduty`, `mail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from common.retry import RetryPolicy
from notifications.errors import Permanent, Retryable

log = logging.getLogger(__name__)

ChannelName = Literal["slack", "pagerduty", "email"]
Purpose = Literal["page", "acknowledge", "resolve", "escalate", "notify", "change"]

CHANNELS: tuple[ChannelName, ...] = ("pagerduty", "slack", "email")


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

    @classmethod
    def refused(
        cls,
        channel: str,
        action: str,
        reason: str,
        *,
        target: str = "",
        purpose: Purpose | None = None,
        incident_key: str | None = None,
        dedup_key: str | None = None,
    ) -> Delivery:
        """A message never sent: the channel refused it before any attempt (a malformed
        event), or the pager policy refused to send (`channel` "notifier")."""
        return cls(
            channel=channel,
            action=action,
            ok=False,
            error=reason,
            target=target,
            purpose=purpose,
            incident_key=incident_key,
            dedup_key=dedup_key,
        )

    def describe(self) -> str:
        what = f"{self.channel} {self.action}"
        if self.purpose:
            what = f"{self.purpose}: {what}"
        if self.ok:
            return f"{what} delivered" + (f" ({self.status})" if self.status else "")
        return f"{what} FAILED after {self.attempts} attempt(s): {self.error}"


class DeliveryPolicy(RetryPolicy):
    """The retry policy of a delivery (by default: 3 attempts, waiting 0.25 s, then twice that,
    at most 2 s), and how long one attempt may take before it counts as failed."""

    max_attempts: int = Field(3, ge=1, le=10)
    backoff: float = Field(0.25, ge=0, le=30)
    max_backoff: float | None = Field(2.0, ge=0, le=60)
    timeout: float = Field(3.0, gt=0, le=60, description="seconds one attempt may take")


Attempt = Callable[[], Awaitable[tuple[int | None, dict[str, Any]]]]


async def deliver(
    channel: str,
    action: str,
    target: str,
    retry: DeliveryPolicy,
    attempt: Attempt,
    *,
    redact: tuple[str, ...] = (),
) -> Delivery:
    """Run `attempt` until it succeeds, fails permanently or runs out of attempts; never raises
    (except cancellation). `attempt` returns (status, extra Delivery fields) on success."""
    started = time.monotonic()

    def outcome(ok: bool, status: int | None, attempts: int, **fields: Any) -> Delivery:
        return Delivery(
            channel=channel,
            action=action,
            ok=ok,
            status=status,
            attempts=attempts,
            target=target,
            seconds=round(time.monotonic() - started, 3),
            **fields,
        )

    status: int | None = None
    error = "not attempted"
    tries = 0
    for tries in range(1, retry.max_attempts + 1):
        wait: float | None = None
        try:
            status, extra = await asyncio.wait_for(attempt(), timeout=retry.timeout)
            return outcome(True, status, tries, **extra)
        except asyncio.CancelledError:
            raise
        except Permanent as failure:
            status, error = failure.status, str(failure)
            break
        except Retryable as failure:
            status, error, wait = failure.status, str(failure), failure.wait
        except (TimeoutError, httpx.TransportError, OSError, smtplib.SMTPServerDisconnected) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except Exception as exc:  # a bug or an unexpected answer: record it, do not retry
            status, error = None, f"{type(exc).__name__}: {exc}"
            break
        if tries < retry.max_attempts:
            delay = retry.delay(tries)
            if wait is not None:  # the server's Retry-After, within our cap
                delay = max(delay, wait)
                delay = delay if retry.max_backoff is None else min(delay, retry.max_backoff)
            await asyncio.sleep(delay)
    for secret in redact:
        if secret:
            error = error.replace(secret, "***")
    log.warning("%s %s to %s failed after %d attempt(s): %s", channel, action, target, tries, error)
    return outcome(False, status, tries, error=error)


def http_outcome(response: httpx.Response, what: str) -> None:
    """Raise the right failure for a non-2xx answer (429 and 5xx are worth retrying)."""
    if response.is_success:
        return
    body = response.text[:300].strip()
    message = f"{what} answered HTTP {response.status_code}" + (f": {body}" if body else "")
    if response.status_code == 429 or response.status_code >= 500:
        wait = None
        with contextlib.suppress(ValueError):
            wait = float(response.headers.get("retry-after", ""))
        raise Retryable(message, response.status_code, wait)
    raise Permanent(message, response.status_code)


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class HttpChannel:
    """A channel that posts JSON to one URL over HTTP: it shares the notifier's client, or opens
    its own, and sends through the shared retry loop."""

    name: ChannelName

    def __init__(self, url: str, http: httpx.AsyncClient | None, retry: DeliveryPolicy) -> None:
        self.url = url
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

    @property
    def target(self) -> str:
        """Where the channel posts, without secrets (the URL's scheme and host)."""
        return host_of(self.url)

    async def post_json(self, body: Mapping[str, Any], what: str) -> httpx.Response:
        """One attempt: post `body`; a non-2xx answer raises (see `http_outcome`)."""
        response = await self.http.post(self.url, json=body)
        http_outcome(response, what)
        return response

    async def deliver(
        self, action: str, attempt: Attempt, *, redact: tuple[str, ...] = ()
    ) -> Delivery:
        """`deliver` for this channel."""
        return await deliver(self.name, action, self.target, self.retry, attempt, redact=redact)
