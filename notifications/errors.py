"""Every exception notifications raises, in one tree with one base:

    NotificationError
    ├── NotificationConfigError (ValueError)  the configuration cannot be used; the message
    │                                         names the file and the field
    └── DeliveryFailed                        one attempt to deliver failed (`status`: the HTTP or
        │                                     SMTP code, if any); `delivery` decides what next
        ├── Retryable                         worth repeating (a timeout, HTTP 429 or 5xx, SMTP
        │                                     4xx); `wait` is the server's Retry-After
        └── Permanent                         repeating would not fix it (HTTP 4xx, SMTP 5xx, no
                                              TLS)

A delivery that fails for good is not raised: it is recorded as a failed `Delivery`, since a
page that could not be sent must never stop a sensor or a controller. Not for: the pager
policy's decisions (`lazarus_lite.paging`).
"""

from __future__ import annotations


class NotificationError(Exception):
    """Base class of every error notifications raises."""


class NotificationConfigError(NotificationError, ValueError):
    """The notification configuration is invalid; the message names the file and the field."""


class DeliveryFailed(NotificationError):
    """One attempt to deliver failed; `status` is the HTTP or SMTP code, if there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Retryable(DeliveryFailed):
    """A failed attempt worth repeating (a timeout, HTTP 429 or 5xx, SMTP 4xx); `wait` is the
    server's Retry-After, if it gave one."""

    def __init__(self, message: str, status: int | None = None, wait: float | None = None):
        super().__init__(message, status)
        self.wait = wait


class Permanent(DeliveryFailed):
    """A failed attempt that repeating would not fix (HTTP 4xx, SMTP 5xx, no TLS)."""
