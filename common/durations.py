"""Durations as people write them in YAML files and on command lines (`90`, `500ms`, `5s`,
`10m`, `4h`), turned into seconds, and their bounds said the way people read them (`at least
0 s and at most 1 day`). Shared by the workflow definitions, the service profiles and the chaos
experiments and CLI. Not for: clocks, deadlines or sleeping.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from common.validation import kind_of, quoted

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `1.5`, `500ms`, `5s`, `10m`, `4h`; anything else (a list, null,
    true, a word) is a ValueError that says what a duration looks like."""
    # bool is an int: `timeout: yes` must not quietly mean one second.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and value.bit_length() > 1000:  # float() would overflow
            raise ValueError(f"{quoted(value)} is out of range for a duration")
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a duration (e.g. 500ms, 5s, 10m, 4h)")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration (e.g. 500ms, 5s, 10m, 4h), not {kind_of(value)}")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
    if not match:
        raise ValueError(f"{quoted(value)} is not a duration (e.g. 500ms, 5s, 10m, 4h)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * UNIT_SECONDS[unit]


# A model field in seconds that a file may write as a duration (`timeout: 5s`); its bounds go
# in the field's own `Field(...)`.
DurationSeconds = Annotated[float, BeforeValidator(parse_duration)]


# Largest first: a length is said in the largest unit that divides it.
_SPOKEN_UNITS = (("day", 86400.0), ("h", 3600.0), ("min", 60.0))


def spoken(seconds: float) -> str:
    """A length as people read it: `1 day`, `30 days`, `2 h`, `1 min`, `1.5 s`."""
    for unit, size in _SPOKEN_UNITS:
        if abs(seconds) >= size and seconds % size == 0:
            count = seconds / size
            plural = "s" if unit == "day" and count != 1 else ""
            return f"{_number(count)} {unit}{plural}"
    return f"{_number(seconds)} s"


def _number(value: float) -> str:
    # Whole numbers in full: `99999999 h` says what was typed, `1e+08 h` does not.
    return str(int(value)) if value == int(value) else f"{value:g}"


def check_within(seconds: float, low: float, high: float, *, above: bool = False) -> float:
    """`seconds` if it is from `low` (more than `low` with `above`) to `high`; otherwise a
    ValueError that says the whole range (pydantic's own bounds name one side only)."""
    too_low = seconds <= low if above else seconds < low
    if too_low or seconds > high:
        lower = f"more than {spoken(low)}" if above else f"at least {spoken(low)}"
        raise ValueError(f"must be {lower} and at most {spoken(high)}, not {spoken(seconds)}")
    return seconds


def seconds_within(low: float, high: float, *, above: bool = False) -> AfterValidator:
    """The bounds of a DurationSeconds field (`Annotated[DurationSeconds, seconds_within(0,
    DAY)]`), refused as `check_within` says."""
    return AfterValidator(lambda seconds: check_within(seconds, low, high, above=above))
