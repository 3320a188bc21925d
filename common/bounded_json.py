"""JSON from outside the process (a request body, a file someone pointed a tool at), parsed
strictly and within bounds: nesting deeper than the caller's limit is refused before the decoder
sees it (it recurses once per level), and so are NaN and Infinity (no JSON values), numbers a
float cannot hold, and integers of over 4300 digits (Python's own limit). Each refusal is a
`JsonProblem` saying where and what, for the caller to word as its own error.

Not for: YAML (see `bounded_yaml`), JSON the project's programs write for each other, or what a
document means (see `validation`).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from common.errors import JsonProblem, JsonTooDeep
from common.validation import quoted

# A JSON string (escapes included; an unterminated one runs to the end, so a match never fails
# and the scan stays linear); with the alternative, one bracket outside strings.
_STRING_PATTERN = r'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)'
_NESTING = re.compile(rf"{_STRING_PATTERN}|[\[\]{{}}]", re.DOTALL)
_STRING = re.compile(_STRING_PATTERN, re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _not_json(constant: str) -> None:
    """`json.loads` takes NaN and Infinity; JSON has neither (and they cannot be answered)."""
    raise JsonProblem(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400, which float() makes infinite
        raise JsonProblem(f"number {quoted(text)} is out of range")
    return value


# One decoder for every call (`json.loads` with hooks builds a new one each time).
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def loads(text: str, *, max_depth: int) -> Any:
    """The JSON value in `text`, nested at most `max_depth` levels (a top-level object or array
    is the first); raises JsonProblem (JsonTooDeep for the nesting)."""
    # No deeper than its opening brackets (strings' included) are many: a text with few of
    # them, such as every ordinary request body, needs no scan.
    if text.count("[") + text.count("{") > max_depth and _deepest(text) > max_depth:
        _refuse_nesting_deeper_than(text, max_depth)
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as problem:
        raise JsonProblem(problem.msg, problem.lineno, problem.colno) from None
    except JsonProblem:
        raise
    except ValueError as problem:  # an integer of over 4300 digits
        raise JsonProblem(str(problem)) from None


def _deepest(text: str) -> int:
    """How deep the brackets outside strings nest, counted without a Python loop per token: the
    strings, then everything but brackets, cut out by the regular expression engine."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _refuse_nesting_deeper_than(text: str, max_depth: int) -> None:
    """Raise JsonTooDeep, naming the line, if brackets outside strings nest past `max_depth`."""
    depth = 0
    for token in _NESTING.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > max_depth:
                line = text.count("\n", 0, token.start()) + 1
                raise JsonTooDeep(f"nested deeper than {max_depth} levels; refused", line)
        elif bracket in ("]", "}"):
            depth -= 1
