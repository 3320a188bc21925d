"""A service's command-line flags and environment variables, made from its settings model: every
field becomes a typer option (the flag from its name or `Setting.flag`, the variable PREFIX+NAME
or `Setting.env`, the help from its description with its default), so a field added to a model
is settable both ways at once and `--help` and README's table cannot disagree with the model.

Precedence is click's: a flag over its variable over the model's default (an option given
neither way is left out, so the model's own default applies). Values reach the model as text
and the model validates them, so a bad one is refused by `parse_settings` naming the setting and
the flag or variable it came from, whichever way it was given.

Not for: validating (`common.settings`), or a command's options that are not settings of the
service (an experiment file, `--json`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Any, Literal, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

from common.errors import InvalidSetting
from common.settings import Setting, parse_settings
from common.validation import without_passwords

Model = TypeVar("Model", bound=BaseModel)
Command = TypeVar("Command", bound=Callable[..., Any])

# Defaults under the project are shown relative to it: the same text on every machine.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# An absolute default inside the project is a file shipped with it, not one in the working
# directory: shown as `(bundled) lazarus_lite/definitions/rules`.
BUNDLED = "(bundled)"
# How click splits a repeatable option's variable: on whitespace (`"sms=3 voice=40"`).
MANY_IN_ENV = "repeat; environment: space-separated"
# The click context parameter a decorated command gets when it has none of its own.
CONTEXT_PARAMETER = "settings_context"


def _bare(annotation: Any) -> Any:
    """The annotation without `| None` (and without Annotated, which pydantic already strips)."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not NoneType]
        if len(args) == 1:
            return _bare(args[0])
    if typing.get_origin(annotation) is typing.Annotated:
        return _bare(typing.get_args(annotation)[0])
    return annotation


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        if value.is_absolute() and value.resolve().is_relative_to(PROJECT_ROOT):
            return f"{BUNDLED} {value.resolve().relative_to(PROJECT_ROOT)}"
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(_default_text(item) for item in value) or "none"
    if isinstance(value, dict):
        return " ".join(f"{key}={item}" for key, item in value.items()) or "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return without_passwords(str(value))


@dataclass(frozen=True)
class SettingOption:
    """One settings field as the command line and the environment see it."""

    name: str  # the model's field name (and the click parameter's)
    flag: str  # e.g. --incident-ttl
    env: str  # e.g. LAZARUS_INCIDENT_TTL
    description: str
    default: str | None  # the model's default as text; None: required, or a secret
    required: bool
    secret: bool  # its value is never shown (nor its default)
    many: bool  # a list or mapping: the flag repeats, the variable is space-separated
    switch: bool  # a true/false setting: --flag / --no-flag
    metavar: str | None

    @property
    def help(self) -> str:
        """The description and how to give it, as `--help` shows it: its default in the same
        words as the README's table (a secret's never)."""
        notes = [self.description] if self.description else []
        if self.many:
            notes.append(f"({MANY_IN_ENV})")
        if self.required:
            notes.append("[required]")
        elif self.default is not None:
            notes.append(f"[default: {self.default}]")
        return " ".join(notes)

    @property
    def declaration(self) -> str:
        """The flag as click declares it: `--x/--no-x` for a switch."""
        return f"{self.flag}/--no-{self.flag[2:]}" if self.switch else self.flag

    def typer_option(self) -> Any:
        # A switch's variable reaches the model as text (`maybe` is refused by the model, in
        # the one refusal shape, not by click's usage box); its flags give True or False.
        parser = {"parser": _as_given} if self.switch else {}
        return typer.Option(
            None,
            self.declaration,
            envvar=self.env,
            show_envvar=True,
            show_default=False,  # the default is None (not given); the model's is in the help
            # typer renders help as rich markup: `[/PEER_HOST]` in a description is text.
            help=escape(self.help),
            metavar=self.metavar,
            **parser,
        )

    @property
    def annotation(self) -> Any:
        if self.switch:
            return bool | None
        return list[str] | None if self.many else str | None


def _as_given(value: object) -> object:
    return value


def _metavar(annotation: Any) -> str | None:
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(choice) for choice in typing.get_args(annotation))
    return {int: "INTEGER", float: "NUMBER", Path: "PATH"}.get(annotation, "TEXT")


def setting_option(name: str, field: FieldInfo, env_prefix: str) -> SettingOption:
    """The flag, variable and help of one field of a settings model."""
    given = next((meta for meta in field.metadata if isinstance(meta, Setting)), Setting())
    annotation = _bare(field.annotation)
    many = typing.get_origin(annotation) in (list, tuple, set, dict)
    switch = annotation is bool
    required = field.is_required()
    if required or given.secret:
        default = None
    else:
        default = _default_text(field.get_default(call_default_factory=True))
    item = typing.get_args(annotation)[0] if many and typing.get_args(annotation) else annotation
    return SettingOption(
        name=name,
        flag=given.flag or "--" + name.replace("_", "-"),
        env=given.env or env_prefix + name.upper(),
        description=field.description or "",
        default=default,
        required=required,
        secret=given.secret,
        many=many,
        switch=switch,
        metavar=None if switch else given.metavar or _metavar(_bare(item)),
    )


def setting_options(
    model: type[BaseModel], env_prefix: str, only: tuple[str, ...] | None = None
) -> list[SettingOption]:
    """Every field of `model` (or the `only` ones) as an option, in the model's order."""
    return [setting_option(name, field, env_prefix)
            for name, field in model.model_fields.items()
            if only is None or name in only]  # fmt: skip


# Where each setting of the running command came from (`--flag`, `VARIABLE`), set by
# `with_settings` before the command runs: what `setting_named` says.
_ORIGINS: ContextVar[Mapping[str, str]] = ContextVar(
    "setting_origins", default=MappingProxyType({})
)


def setting_named(model: type[BaseModel], env_prefix: str, name: str) -> str:
    """`setting 'NAME' (--flag)` (or its variable, whichever gave the value; both ways to give
    it when neither did): how a message names a setting found bad after its model accepted it
    (by a check only the service can make)."""
    option = setting_option(name, model.model_fields[name], env_prefix)
    return f"setting '{name}' ({_ORIGINS.get().get(name) or _origin(option, None)})"


def _origin(option: SettingOption, source: Enum | None) -> str:
    # click's ParameterSource (typer vendors its own click, so compared by name).
    if source is not None and source.name == "COMMANDLINE":
        return option.flag
    if source is not None and source.name == "ENVIRONMENT":
        return option.env
    return f"{option.flag} or {option.env}"  # not given: say both ways to give it


def _is_context(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, typer.Context)


def _given(value: object) -> object:
    """None for an option given neither way (a repeatable one is then an empty tuple)."""
    return None if value == () or value == [] else value


def refuse_to_start(command_name: str, problem: object) -> typer.Exit:
    """Print `COMMAND: refusing to start: PROBLEM` on stderr; the exit (2) to raise."""
    typer.echo(f"{command_name}: refusing to start: {problem}", err=True)
    return typer.Exit(2)


def _parse(model: type[Model], values: Mapping[str, object], origins: Mapping[str, str]) -> Model:
    # A model with checks beyond its fields (an etcd backend needs endpoints) has its own parse.
    own_parse = getattr(model, "parse", None)
    if own_parse is not None:
        return own_parse(origins=origins, **values)
    return parse_settings(model, values, origins)


def with_settings(
    model: type[BaseModel],
    *,
    env_prefix: str,
    command_name: str,
    only: tuple[str, ...] | None = None,
    parameter: str = "settings",
) -> Callable[[Command], Command]:
    """Decorate a typer command that takes `settings: <model>` (or `parameter`): the command
    gets an option per field of `model` (see `setting_options`; `only` some) besides its own,
    and is called with the validated settings; a bad one exits 2 with
    `COMMAND: refusing to start: setting 'x' (FLAG or VARIABLE): ...` before the command runs.
    Decorators stack, one model per parameter."""
    options = setting_options(model, env_prefix, only)

    def decorate(command: Command) -> Command:
        hints = typing.get_type_hints(command)
        own = [kept.replace(annotation=hints.get(kept.name, kept.annotation),
                            kind=inspect.Parameter.KEYWORD_ONLY)
               for kept in inspect.signature(command).parameters.values()
               if kept.name != parameter]  # fmt: skip
        made = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                                  default=option.typer_option(), annotation=option.annotation)
                for option in options]  # fmt: skip
        # Where each value came from is the click context's to say; typer hands it to one
        # parameter per command, which this adds unless the command (or another of these
        # decorators) already has one.
        own_context = next((kept.name for kept in own if _is_context(kept.annotation)), None)
        if own_context is None:
            made.append(inspect.Parameter(CONTEXT_PARAMETER, inspect.Parameter.KEYWORD_ONLY,
                                          annotation=typer.Context))  # fmt: skip

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            context = values[own_context] if own_context else values.pop(CONTEXT_PARAMETER)
            given = {option.name: _given(values.pop(option.name)) for option in options}
            origins = {option.name: _origin(option, context.get_parameter_source(option.name))
                       for option in options}  # fmt: skip
            try:
                settings = _parse(model, given, origins)
            except InvalidSetting as error:
                raise refuse_to_start(command_name, error) from None
            known = _ORIGINS.set({**_ORIGINS.get(), **origins})
            try:
                return command(**{parameter: settings}, **values)
            finally:
                _ORIGINS.reset(known)

        # What README's settings table lists (`settings_reference`), stacked decorators' too.
        listed = [*getattr(command, "setting_options", []), *options]
        run.setting_options = listed  # type: ignore[attr-defined]
        parameters = [*own, *made]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run  # type: ignore[return-value]

    return decorate
