"""Lazarus rules: YAML documents in the seed's shape (criteria, checks, lock, action) that decide
which events the controller may remediate and how.

Loading is strict: an unknown field, check or action is an error that names the file and the
rule, so a typo can never silently disable a guard. `RuleBook.match` returns the first rule whose
criteria match an event, or None (the event is then escalated). Not for: running checks or
actions (see `checks` and `workflow`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import input_files
from common.validation import kind_of, quoted, validated
from detection.events import EVENT_TYPES, Event
from lazarus_lite.errors import RuleError

LockKind = Literal["host", "service", "shard"]
# Bounded: a rule's name is quoted in every message about it.
RULE_NAME = r"^[A-Za-z0-9_.-]{1,100}$"


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
            raise ValueError(
                f"unknown event type {quoted(unknown)}; expected one of {list(EVENT_TYPES)}"
            )
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

    name: str = Field(pattern=RULE_NAME)
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
    documents = input_files.parse_documents(
        text, source, expected="a rule (a mapping) or a list of rules", error=RuleError
    )
    raw_rules: list[Any] = []
    for document in documents:
        raw_rules.extend(document if isinstance(document, list) else [document])
    rules = []
    for index, raw in enumerate(raw_rules):
        label = _label(raw, index)
        if not isinstance(raw, dict):
            raise RuleError(f"{source}: rule {label}: expected a mapping, not {kind_of(raw)}")
        rule = validated(Rule, raw, f"{source}: rule {label}", error=RuleError)
        for spec in rule.checks:
            if spec.check_name not in checks:
                raise RuleError(
                    f"{source}: rule {rule.name}: unknown check {quoted(spec.check_name)}; "
                    f"expected one of {sorted(checks)}"
                )
        if rule.action.name not in actions:
            raise RuleError(
                f"{source}: rule {rule.name}: unknown action {quoted(rule.action.name)}; "
                f"expected one of {sorted(actions)}"
            )
        rules.append(rule)
    return rules


def _label(raw: Any, index: int) -> str:
    """How messages name a rule: its name as written when it is a valid one, else quoted (so a
    huge or odd name stays short), else its position."""
    name = raw.get("name") if isinstance(raw, dict) else None
    if name is None:
        return f"#{index + 1}"
    return name if isinstance(name, str) and re.fullmatch(RULE_NAME, name) else quoted(name)


def load_rules(
    paths: Iterable[Path], *, known_checks: Iterable[str], known_actions: Iterable[str]
) -> RuleBook:
    """Load rule files (a directory means every *.yaml / *.yml in it, sorted by name)."""
    checks, actions = list(known_checks), list(known_actions)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += input_files.yaml_files(path, what="rule files", error=RuleError)
        else:
            files.append(path)  # read_text names it if it is missing
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for file in files:
        text = input_files.read_text(file, error=RuleError)
        for rule in parse_rules(text, str(file), known_checks=checks, known_actions=actions):
            if rule.name in seen:
                raise RuleError(f"{file}: rule {rule.name}: name already used in {seen[rule.name]}")
            seen[rule.name] = file
            rules.append(rule)
    return RuleBook(rules)
