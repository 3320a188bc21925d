"""Points in time as command lines take and show them: ISO 8601 in UTC for output
(`2026-12-03T04:00:00Z`), and a `--since` that is either an ISO 8601 time or a duration ago
(`10m`, `4h`, `500ms`).

Not for: durations alone (common.durations) or clocks and deadlines.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from common.durations import parse_duration
from common.validation import quoted

SINCE_EXAMPLES = "an ISO 8601 time such as 2026-12-03T04:00:00Z, or a duration ago such as 10m"


def iso_utc(epoch: float) -> str:
    """`2026-12-03T04:00:00Z`: a full date and time in UTC, to the second."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(text: str, *, now: float) -> float:
    """The epoch `text` names: an ISO 8601 time (a time without an offset is UTC) or a duration
    with its unit, meaning that long before `now`. A bare number is refused: it could be seconds
    ago or a unix time. Raises ValueError saying what was expected."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", value):
        return now - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{quoted(text)} is not {SINCE_EXAMPLES}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    epoch = moment.timestamp()
    if not math.isfinite(epoch):
        raise ValueError(f"{quoted(text)} is not {SINCE_EXAMPLES}")
    return epoch
