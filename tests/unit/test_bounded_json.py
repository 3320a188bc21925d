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


def test_the_refusal_names_the_line_counting_only_newlines_outside_strings_cut_out() -> None:
    text = '{"a": "[[[[\\n]]",\n "b":\n' + nested(65) + "}"
    with pytest.raises(JsonTooDeep) as refused:
        bounded_json.loads(text, max_depth=64)
    assert refused.value.line == 3


@pytest.mark.parametrize(("padding", "line"), [(" " * 20_000, 1), ("\n" * 200_000, 200_001)],
                         ids=["spaces", "newlines"])  # fmt: skip
def test_nesting_past_the_first_prefix_read_is_refused_naming_its_line(
    padding: str, line: int
) -> None:
    with pytest.raises(JsonTooDeep) as refused:
        bounded_json.loads("[" + padding + nested(64) + "]", max_depth=64)
    assert refused.value.line == line


def test_a_raw_newline_ends_a_string_for_the_nesting_measure() -> None:
    # Not JSON either way; the brackets after the broken string are still counted, and the
    # refusal names the line they are on.
    with pytest.raises(JsonTooDeep) as refused:
        bounded_json.loads('["x\n' + "[" * 100, max_depth=64)
    assert refused.value.line == 2


class ReadingRecorder:
    """Stands in for the string pattern, recording how much text each scan is given."""

    def __init__(self) -> None:
        self.lengths: list[int] = []
        self.pattern = bounded_json._STRING

    def sub(self, replacement: str, text: str) -> str:
        self.lengths.append(len(text))
        return self.pattern.sub(replacement, text)


def test_a_text_opening_too_deep_is_refused_without_reading_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = ReadingRecorder()
    monkeypatch.setattr(bounded_json, "_STRING", recorder)
    with pytest.raises(JsonTooDeep) as refused:
        bounded_json.loads("[" * (4 << 20), max_depth=64)
    assert refused.value.line == 1
    assert max(recorder.lengths) <= 16 * 1024


def test_a_text_measured_too_deep_is_refused_even_if_no_position_passes_the_limit() -> None:
    # The measure and the search for the line disagreeing must not let the text through.
    with pytest.raises(JsonTooDeep) as refused:
        bounded_json._refuse("[]\n[]", max_depth=64)
    assert refused.value.line is None


def test_brackets_hidden_behind_a_raw_newline_in_a_string_never_reach_the_decoder_deep() -> None:
    # A RecursionError (a 500) would escape pytest.raises and fail the test.
    with pytest.raises(JsonProblem):
        bounded_json.loads('"a\n" ' + "[" * 100_000, max_depth=64)


def test_an_integer_too_long_to_convert_is_refused_naming_the_field_holding_it() -> None:
    text = '{"a": [1, {"b": ' + "9" * 5000 + "}]}"
    with pytest.raises(JsonProblem) as refused:
        bounded_json.loads(text, max_depth=64)
    assert str(refused.value) == (
        "field 'a.1.b': an integer of 5000 digits; expected an integer of at most 4300 digits"
    )


LONG = "9" * 5000


@pytest.mark.parametrize(
    "text",
    ['{"id": ' + LONG + ", }", "[" + LONG + "] x", "[" + LONG + ", NaN]"],
    ids=["trailing comma", "text after", "nan after"],
)
def test_a_text_malformed_after_an_integer_too_long_to_convert_is_refused_as_a_json_problem(
    text: str,
) -> None:
    with pytest.raises(JsonProblem):
        bounded_json.loads(text, max_depth=64)
