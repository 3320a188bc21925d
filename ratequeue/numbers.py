"""Phone numbers: normalization to one canonical form, and the number's type.

The canonical form is what routes a number to its shard and names its queue, so two spellings of
one number must normalize to the same string. Not for: rates (see `ratequeue.rates`).
"""

from __future__ import annotations

import re
from enum import StrEnum

from ratequeue.errors import InvalidNumber

# North American toll-free area codes (NANP).
TOLL_FREE_AREA_CODES = frozenset({"800", "833", "844", "855", "866", "877", "888"})

# ASCII only: `\d` and str.isdigit() also match other scripts' digits (Arabic-Indic, ...), which
# would make one number spell itself two ways.
_SEPARATORS = re.compile(r"[\s().\-]", re.ASCII)
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_SHORT_CODE = re.compile(r"^[1-9][0-9]{4,5}$")
MAX_RAW_LENGTH = 32

# What `normalize_number` accepts, as one regular expression (ECMA-262 and Python alike) for the
# published API schema: separators anywhere, then E.164, 00 + E.164 digits, a North American
# 10- or 1-prefixed 11-digit number, or a short code. Tests check it agrees with the code.
_S = r"[ \t\n\r\f\v().-]*"
_D = rf"(?:{_S}[0-9])"
NUMBER_PATTERN = (
    rf"^{_S}(?:\+{_S}[1-9]{_D}{{7,14}}|0{_S}0{_S}[1-9]{_D}{{7,14}}|[2-9]{_D}{{9}}|1{_D}{{10}}"
    rf"|[1-9]{_D}{{4,5}}){_S}$"
)


class NumberType(StrEnum):
    LONG_CODE = "long_code"
    TOLL_FREE = "toll_free"
    SHORT_CODE = "short_code"


def normalize_number(raw: str) -> str:
    """Return the canonical number: E.164 (`+14155550100`) or a 5-6 digit short code.

    Separators (spaces, dashes, dots, parentheses) are ignored; a bare 10-digit or 1-prefixed
    11-digit number is taken as North American.
    """
    if not isinstance(raw, str) or len(raw) > MAX_RAW_LENGTH:
        raise InvalidNumber(f"number must be a string of at most {MAX_RAW_LENGTH} characters")
    compact = _SEPARATORS.sub("", raw)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if compact.isascii() and compact.isdigit():
        if len(compact) == 10 and compact[0] in "23456789":
            compact = "+1" + compact
        elif len(compact) == 11 and compact[0] == "1":
            compact = "+" + compact
        elif _SHORT_CODE.fullmatch(compact):
            return compact
    if _E164.fullmatch(compact):
        return compact
    raise InvalidNumber(
        f"number {raw!r} is not a phone number: expected E.164 (+ and 8-15 ASCII digits), "
        "a 10-digit North American number, or a 5-6 digit short code"
    )


def number_type(number: str) -> NumberType:
    """Classify a canonical number (as returned by `normalize_number`)."""
    if not number.startswith("+"):
        return NumberType.SHORT_CODE
    if number.startswith("+1") and number[2:5] in TOLL_FREE_AREA_CODES:
        return NumberType.TOLL_FREE
    return NumberType.LONG_CODE
