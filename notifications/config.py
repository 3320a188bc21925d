"""The notification configuration: teams and their channels (Slack, PagerDuty, email), which
team and channels each service uses, the acknowledgement deadline and the retry policy, read
from YAML with ${NAME} taken from the environment (`load_notification_config`), and the
`Route` it gives a service.

Not for: sending (see `notifier` and the channel modules) or the pager policy that uses the
deadline (`lazarus_lite.paging`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from notifications.delivery import CHANNELS, ChannelName, DeliveryPolicy
from notifications.errors import NotificationConfigError
from notifications.pagerduty import CLIENT_NAME, PAGERDUTY_EVENTS_URL, Severity


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

    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            max_attempts=self.attempts,
            backoff=self.backoff_seconds,
            max_backoff=self.max_backoff_seconds,
            timeout=self.timeout_seconds,
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
    audit_url: HttpUrlText | None = Field(
        None,
        description="the controllers' API base URL: a page links to the audit record of its "
        "event there (GET /v1/events/{event id})",
    )
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
