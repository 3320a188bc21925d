"""Lazarus rules: YAML documents in the seed's shape (criteria, checks, lock, action) that decide
which events the controller may remediate and how.

Loading is strict: an unknown field, check or action is an error that names the file and the
rule, so a typo can never silently disable a guard. `RuleBook.match` returns the first rule whose
criteria match an event, or None (the event is then escalated). Not for: running checks or
actions (see `checks` and `workflow`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from failover.events import EVENT_TYPES, Event
from ratequeue import bounded_yaml
from ratequeue.validation import describe_problems

LockKind = Literal["host", "service", "shard"]


class RuleError(ValueError):
    """A rule file is invalid; the message names the file, the rule and the field."""


class Criteria(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = Field(description="'a|b|c' alternatives")
    event_type: str
    service: str | None = None
    region: str | None = None
    event_data: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("event_type")
    @classmethod
    def _known_event_types(cls, value: str) -> str:
        unknown = [t for t in value.split("|") if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type {unknown}; expected one of {list(EVENT_TYPES)}")
        return value


class CheckSpec(BaseModel):
    """One precondition check. `default` is the check's threshold where it has one (as in the
    seed's `MinActiveHosts: default: 2`); other parameters go in `params`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    check_name: str = Field(alias="checkName")
    default: int | float | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    criteria: Criteria
    checks: list[CheckSpec] = Field(default_factory=list)
    lock: LockKind | None = None
    action: Action

    def matches(self, event: Event) -> bool:
        c = self.criteria
        if not _alternatives_match(c.environment, event.environment):
            return False
        if not _alternatives_match(c.event_type, event.type):
            return False
        if c.service is not None and not _alternatives_match(c.service, event.service):
            return False
        if c.region is not None and not _alternatives_match(c.region, event.region):
            return False
        for key, expected in c.event_data.items():
            if key not in event.data or not _alternatives_match(
                _as_text(expected), _as_text(event.data[key])
            ):
                return False
        return True


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _alternatives_match(pattern: str, value: str) -> bool:
    return value in pattern.split("|")


class RuleBook:
    """The rules of a controller, in load order (the first match wins)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)

    def match(self, event: Event) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(event)), None)

    def get(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def parse_rules(
    text: str, source: str, *, known_checks: Iterable[str], known_actions: Iterable[str]
) -> list[Rule]:
    """Rules from YAML text (one rule, a list of rules, or several documents)."""
    checks, actions = set(known_checks), set(known_actions)
    try:
        documents = [d for d in bounded_yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise RuleError(f"{source}: not valid YAML: {error}") from None
    raw_rules: list[Any] = []
    for document in documents:
        raw_rules.extend(document if isinstance(document, list) else [document])
    rules = []
    for index, raw in enumerate(raw_rules):
        label = raw.get("name", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
        if not isinstance(raw, dict):
            raise RuleError(f"{source}: rule {label}: expected a mapping")
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as error:
            raise RuleError(f"{source}: rule {label}: {describe_problems(error)}") from None
        for spec in rule.checks:
            if spec.check_name not in checks:
                raise RuleError(
                    f"{source}: rule {rule.name}: unknown check '{spec.check_name}'; "
                    f"expected one of {sorted(checks)}"
                )
        if rule.action.name not in actions:
            raise RuleError(
                f"{source}: rule {rule.name}: unknown action '{rule.action.name}'; "
                f"expected one of {sorted(actions)}"
            )
        rules.append(rule)
    return rules


def load_rules(
    paths: Iterable[Path], *, known_checks: Iterable[str], known_actions: Iterable[str]
) -> RuleBook:
    """Load rule files (a directory means every *.yaml / *.yml in it, sorted by name)."""
    checks, actions = list(known_checks), list(known_actions)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"})
        elif path.exists():
            files.append(path)
        else:
            raise RuleError(f"{path}: no such file or directory")
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for file in files:
        for rule in parse_rules(
            file.read_text(), str(file), known_checks=checks, known_actions=actions
        ):
            if rule.name in seen:
                raise RuleError(f"{file}: rule {rule.name}: name already used in {seen[rule.name]}")
            seen[rule.name] = file
            rules.append(rule)
    return RuleBook(rules)
