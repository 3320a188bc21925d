"""YAML files people write are refused, quickly and with a message, when their aliases expand
beyond a bound (a "billion laughs" file); ordinary anchors still work."""

from __future__ import annotations

import time

import pytest

from chaos.errors import ExperimentError
from chaos.experiments import parse_experiment
from common import bounded_yaml
from lazarus_lite.errors import RuleError
from lazarus_lite.rules import parse_rules


def alias_bomb(levels: int = 9) -> str:
    """Each level is ten aliases of the one before: 10**levels values in a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append(f"name: *a{levels}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_without_being_built() -> None:
    started = time.monotonic()
    with pytest.raises(bounded_yaml.AliasBomb, match="aliases expand to more than"):
        bounded_yaml.safe_load(alias_bomb())
    assert time.monotonic() - started < 2


def test_ordinary_anchors_and_documents_load_as_with_pyyaml() -> None:
    text = "defaults: &d {retry: 3}\nfirst: *d\nsecond: {<<: *d, timeout: 5}\n"
    assert bounded_yaml.safe_load(text) == {
        "defaults": {"retry": 3}, "first": {"retry": 3}, "second": {"retry": 3, "timeout": 5},
    }  # fmt: skip
    assert bounded_yaml.safe_load_all("a: 1\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
    assert bounded_yaml.safe_load("") is None


def test_a_rules_file_that_is_an_alias_bomb_is_refused_naming_the_file() -> None:
    with pytest.raises(RuleError, match=r"bomb\.yaml: not valid YAML: .*aliases expand"):
        parse_rules(alias_bomb(), "bomb.yaml", known_checks=[], known_actions=[])


def test_an_experiment_that_is_an_alias_bomb_is_refused_naming_the_file() -> None:
    with pytest.raises(ExperimentError, match=r"bomb\.yaml: not valid YAML: .*aliases expand"):
        parse_experiment(alias_bomb(), "bomb.yaml")


def test_nesting_deeper_than_the_bound_is_refused_before_the_python_stack_runs_out() -> None:
    for deep in ("- " * 5000 + "x\n", "a: " + "[" * 5000):
        with pytest.raises(bounded_yaml.TooDeep, match="nested deeper than 100 levels"):
            bounded_yaml.safe_load(deep)
        with pytest.raises(bounded_yaml.TooDeep):
            bounded_yaml.safe_load_all("a: 1\n---\n" + deep)


def test_nesting_as_deep_as_the_bound_still_loads() -> None:
    deepest = "[" * bounded_yaml.MAX_DEPTH + "]" * bounded_yaml.MAX_DEPTH
    value = bounded_yaml.safe_load(deepest)
    for _ in range(bounded_yaml.MAX_DEPTH - 1):
        (value,) = value
    assert value == []
