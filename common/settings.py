"""The one way a service's settings (CLI options and environment variables) are validated before
anything starts: `parse_settings` builds the settings model, leaving out the options not given,
and a bad value raises `InvalidSetting` naming each bad setting, where its value came from, and
what was expected, so every service refuses to start with the same kind of message. Also
`Setting`, what a model field says about its flag and variable when its name alone does not.

Not for: the settings models themselves (each service owns its own), making CLI options from
them (`settings_options`), or files people write (see `input_files`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, ValidationError

from common.errors import InvalidSetting, SettingProblem
from common.validation import Model, describe_problems


@dataclass(frozen=True)
class Setting:
    """A settings field's flag and environment variable when they are not made from its name
    (`--control` for `control_url`, kept from before deployments used it), and whether its
    value is a secret (`--help` and the README never show a secret's value or default).
    Put it in the field's annotation: `control_url: Annotated[RedisUrlText, Setting("--control")]`.
    """

    flag: str | None = None
    env: str | None = None
    secret: bool = False
    metavar: str | None = None  # what `--help` shows the value as, when not its type's name


def lowercase_text(value: object) -> object:
    """A before-validator: text in any case for a setting whose choices are lowercase."""
    return value.strip().lower() if isinstance(value, str) else value


# `logging`'s other names for two of its levels.
LOG_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}


def log_level_text(value: object) -> object:
    """A before-validator: a level name in any case, `logging`'s aliases (WARN, FATAL) mapped."""
    value = lowercase_text(value)
    return LOG_LEVEL_ALIASES.get(value, value) if isinstance(value, str) else value


# What `logging` and uvicorn both take, in any case (WARNING, warning, WARN).
LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(log_level_text)
]
# What `logging` alone takes (a service without uvicorn): NOTSET too, which logs everything.
LoggingLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug", "notset"],
    BeforeValidator(log_level_text),
]


def etcd_endpoints_checked(endpoints: str | None) -> None:
    """An etcd backend's `etcd_endpoints` checked from a model's check across fields: raises
    `SettingProblem` blaming it (so the message says where its value came from)."""
    from common.etcd_client import endpoints_setting

    try:
        endpoints_setting(endpoints)
    except InvalidSetting as error:
        raise SettingProblem(
            "etcd_endpoints", str(error).removeprefix("etcd_endpoints: ")
        ) from None


def parse_settings(
    model: type[Model], values: Mapping[str, object], origins: Mapping[str, str] | None = None
) -> Model:
    """`model` from `values`, those that are None left to their defaults (an option not given);
    raises InvalidSetting naming each bad setting, and after it where its value came from
    (`origins`: a flag or an environment variable per setting)."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        raise InvalidSetting(describe_problems(error, "setting", origins=origins)) from None
