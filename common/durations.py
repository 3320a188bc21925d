"""Durations as people write them in YAML files and on command lines (`90`, `500ms`, `5s`,
`10m`, `4h`), turned into seconds. Shared by the workflow definitions, the service profiles and
the chaos experiments and CLI. Not for: clocks, deadlines or sleeping.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

from common.validation import kind_of, quoted

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `1.5`, `500ms`, `5s`, `10m`, `4h`; anything else (a list, null,
    true, a word) is a ValueError that says what a duration looks like."""
    # bool is an int: `timeout: yes` must not quietly mean one second.
    if isinstance(value, int | float) and not isinstance(value, bool):
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
