"""`common.durations.parse_duration`: what a duration in a file or a flag may look like."""

from __future__ import annotations

import pytest

from common.durations import parse_duration


def test_an_integer_too_large_for_a_float_is_refused_as_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range for a duration"):
        parse_duration(10**400)


def test_a_number_and_a_text_with_a_unit_are_seconds() -> None:
    assert (parse_duration(90), parse_duration("1.5s"), parse_duration("4h")) == (90, 1.5, 14400)
