"""Points in time on command lines: ISO 8601 UTC out, an ISO time or a duration ago in."""

from __future__ import annotations

import pytest

from common.points_in_time import iso_utc, parse_since

NOW = 1_796_270_400.0  # 2026-12-03T04:00:00Z


def test_iso_utc_is_the_full_date_and_time_in_utc() -> None:
    assert iso_utc(NOW + 0.9) == "2026-12-03T04:00:00Z"


@pytest.mark.parametrize(
    ("text", "epoch"),
    [("2026-12-03T04:00:00Z", NOW), ("2026-12-03T05:00:00+01:00", NOW),
     ("2026-12-03T04:00:00", NOW), ("10m", NOW - 600), ("4h", NOW - 14400),
     ("500ms", NOW - 0.5)],
)  # fmt: skip
def test_since_is_an_iso_time_or_a_duration_before_now(text: str, epoch: float) -> None:
    assert parse_since(text, now=NOW) == epoch


@pytest.mark.parametrize("text", ["600", "soon", "10 m", "2026-13-01T00:00:00Z", ""])
def test_since_refuses_a_bare_number_or_anything_else_saying_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO 8601 time .* or a duration ago"):
        parse_since(text, now=NOW)
