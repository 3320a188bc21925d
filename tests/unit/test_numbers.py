"""Phone numbers: every spelling of a number normalizes to one canonical form, malformed ones are
refused naming the accepted forms, and the pattern the API publishes agrees with the code."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratequeue.errors import InvalidNumber
from ratequeue.numbers import (
    MAX_RAW_LENGTH,
    NUMBER_PATTERN,
    NumberType,
    normalize_number,
    number_type,
)


@pytest.mark.parametrize(
    "raw",
    ["+14155550100", "+1 (415) 555-0100", "415.555.0100", "4155550100", "14155550100",
     "0014155550100"],
)  # fmt: skip
def test_spellings_of_one_number_normalize_to_the_same_e164(raw: str) -> None:
    assert normalize_number(raw) == "+14155550100"


def test_short_codes_stay_as_digits() -> None:
    assert normalize_number("12345") == "12345"
    assert number_type("12345") is NumberType.SHORT_CODE


def test_toll_free_area_codes_are_toll_free() -> None:
    assert number_type(normalize_number("+1 800 555 0100")) is NumberType.TOLL_FREE
    assert number_type(normalize_number("+18885550100")) is NumberType.TOLL_FREE


def test_other_numbers_are_long_codes() -> None:
    assert number_type("+14155550100") is NumberType.LONG_CODE
    assert number_type("+447700900123") is NumberType.LONG_CODE


@pytest.mark.parametrize("raw", ["", "abc", "+", "+0123456789", "123", "12|34567", "+1" + "2" * 20])
def test_malformed_numbers_are_refused_with_the_expected_forms(raw: str) -> None:
    with pytest.raises(InvalidNumber, match=r"E\.164"):
        normalize_number(raw)


@pytest.mark.parametrize(
    "raw",
    ["+1\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0660",  # Arabic-Indic
     "\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0660",
     "2\u0660\u0660\u0660\u0660",  # a short code with one
     "+1415555\uff10\uff11\uff10\uff10"],  # fullwidth
)  # fmt: skip
def test_digits_of_other_scripts_are_refused_not_taken_as_another_number(raw: str) -> None:
    with pytest.raises(InvalidNumber, match="ASCII"):
        normalize_number(raw)


SPELLINGS = st.text(alphabet="0123456789+ ().-\t\n", max_size=MAX_RAW_LENGTH)


def _accepted(raw: str) -> bool:
    try:
        normalize_number(raw)
    except InvalidNumber:
        return False
    return True


@settings(derandomize=True, database=None, max_examples=500)
@given(raw=st.one_of(SPELLINGS, st.from_regex(NUMBER_PATTERN, fullmatch=True)))
def test_the_published_number_pattern_matches_exactly_what_normalize_accepts(raw: str) -> None:
    published = len(raw) <= MAX_RAW_LENGTH and re.fullmatch(NUMBER_PATTERN, raw) is not None
    assert published == _accepted(raw)
