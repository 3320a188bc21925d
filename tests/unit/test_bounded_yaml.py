"""YAML files people write are refused, quickly and with a message, when their aliases expand
beyond a bound (a "billion laughs" file) or refer to themselves, when they nest too deep, or when
a mapping repeats a key; ordinary anchors and merge keys still work."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
import yaml

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


TimeLimit = Callable[[float], AbstractContextManager[None]]


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: &a [*a]\n", 1, 8),
        ("criteria: &c {event_type: *c}\n", 1, 27),
        ("a: &a\n  b:\n    - 1\n    - {c: *a}\n", 4, 11),
        ("a: &a {<<: *a}\n", 1, 12),
    ],
)
def test_a_self_referencing_alias_is_refused_as_invalid_yaml(
    text: str, line: int, column: int, time_limit: TimeLimit
) -> None:
    with time_limit(5), pytest.raises(yaml.MarkedYAMLError) as error:
        bounded_yaml.safe_load(text)
    problem = error.value
    assert problem.problem is not None and problem.problem.startswith("recursive alias *")
    assert problem.problem_mark is not None
    assert (problem.problem_mark.line + 1, problem.problem_mark.column + 1) == (line, column)


def test_a_self_referencing_alias_is_refused_in_any_document_of_a_stream(
    time_limit: TimeLimit,
) -> None:
    with time_limit(5), pytest.raises(yaml.YAMLError, match="recursive alias \\*a"):
        bounded_yaml.safe_load_all("a: 1\n---\nb: &a [*a]\n")


def test_an_alias_to_a_finished_collection_inside_a_later_one_still_loads() -> None:
    text = "base: &b [1]\nmore: &m {list: *b}\nboth: [*b, *m]\n"
    assert bounded_yaml.safe_load(text) == {
        "base": [1], "more": {"list": [1]}, "both": [[1], {"list": [1]}],
    }  # fmt: skip


def test_a_repeated_key_is_refused_naming_it_and_both_lines() -> None:
    text = "name: r\nchecks: [ping]\naction: a\nchecks: []\n"
    with pytest.raises(yaml.YAMLError) as error:
        bounded_yaml.safe_load(text)
    problem = error.value
    assert isinstance(problem, yaml.MarkedYAMLError) and problem.problem_mark is not None
    assert problem.problem == (
        "duplicate key 'checks' (first on line 2); each key may appear once in a mapping"
    )
    assert problem.problem_mark.line + 1 == 4


@pytest.mark.parametrize("text", ["{1: a, 1.0: b}\n", "{true: a, yes: b}\n", "{'x': a, x: b}\n"])
def test_keys_that_build_the_same_value_are_repeated_keys(text: str) -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key"):
        bounded_yaml.safe_load(text)


def test_a_key_repeated_through_an_alias_of_itself_is_a_repeated_key() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        bounded_yaml.safe_load("&k a: 1\n*k : 2\n")


def test_a_repeated_key_in_a_nested_mapping_or_a_later_document_is_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'action'"):
        bounded_yaml.safe_load("steps:\n  - {action: kill, action: pause}\n")
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a' \\(first on line 3\\)"):
        bounded_yaml.safe_load_all("a: 1\n---\na: 1\na: 2\n")


def test_keys_that_differ_in_type_and_a_key_that_overrides_a_merged_one_are_not_repeats() -> None:
    assert bounded_yaml.safe_load("{1: a, '1': b}\n") == {1: "a", "1": "b"}
    text = "d: &d {x: 1, y: 1}\ne: {<<: *d, x: 2}\nf: {<<: [*d], <<: *d}\n"
    assert bounded_yaml.safe_load(text) == {
        "d": {"x": 1, "y": 1}, "e": {"x": 2, "y": 1}, "f": {"x": 1, "y": 1},
    }  # fmt: skip


def test_an_integer_too_long_to_convert_is_refused_as_invalid_yaml_naming_its_line() -> None:
    with pytest.raises(yaml.YAMLError, match="expected at most 4300 digits") as refused:
        bounded_yaml.safe_load("a: 1\nb: " + "9" * 5000 + "\n")
    assert refused.value.problem_mark.line + 1 == 2
