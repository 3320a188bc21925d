"""`common.bounded_json.loads`: JSON nested past the caller's limit is refused before the decoder
recurses into it, whether or not the text holds many brackets, and nothing within the limit is.

Not for: how the services word the refusal (tests/test_http_api.py and the other hostile-input
tests), or files (tests/unit/test_input_files.py)."""

from __future__ import annotations

import pytest

from common import bounded_json
from common.errors import JsonProblem, JsonTooDeep


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_as_deep_as_the_limit_loads() -> None:
    loaded = bounded_json.loads(nested(64), max_depth=64)
    for _ in range(63):
        (loaded,) = loaded
    assert loaded == []


def test_nesting_one_level_past_the_limit_is_refused_naming_its_line() -> None:
    with pytest.raises(JsonTooDeep, match="nested deeper than 64 levels") as refused:
        bounded_json.loads('{"a":\n\n' + nested(64) + "}", max_depth=64)
    assert refused.value.line == 3


def test_many_brackets_side_by_side_are_not_nesting() -> None:
    assert bounded_json.loads("[" + ",".join(["[{}]"] * 500) + "]", max_depth=3)[499] == [{}]


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = '["' + "[{" * 100 + '"]'
    assert bounded_json.loads(text, max_depth=1) == ["[{" * 100]


@pytest.mark.parametrize("text", ["NaN", "[1e400]", "{"], ids=["nan", "infinite", "truncated"])
def test_what_is_not_json_is_refused_as_a_json_problem(text: str) -> None:
    with pytest.raises(JsonProblem):
        bounded_json.loads(text, max_depth=64)
