"""JSON from outside the process (a request body, a file someone pointed a tool at), parsed
strictly and within bounds: nesting deeper than the caller's limit is refused before the decoder
sees it (it recurses once per level), and so are NaN and Infinity (no JSON values), numbers a
float cannot hold, and integers of over 4300 digits (Python's own limit; the refusal names the
field holding one). `loads_bytes` also decodes the text (UTF-8, -16 or -32, as `json.loads` does)
and refuses a string with a lone UTF-16 surrogate. Each refusal is a `JsonProblem` saying where
and what, for the caller to word as its own error.

Not for: YAML (see `bounded_yaml`), JSON the project's programs write for each other, or what a
document means (see `validation`).
"""

from __future__ import annotations

import json
import math
import operator
import re
import sys
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, NoReturn

from common.errors import JsonProblem, JsonTooDeep
from common.validation import quoted

# A JSON string (escapes included), ended by its quote, a raw newline or the end of the text, so a
# match never fails and the scan stays linear. JSON strings hold no raw newline (the decoder
# refuses one before reading on), so stopping there keeps every newline outside the strings cut
# out: the line of a refusal is counted on the reduced text.
_STRING = re.compile(r'"[^"\\\n]*(?:\\[^\n]?[^"\\\n]*)*(?:"|(?=\n)|\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}\n]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1, "\n": 0}
# Nesting is measured on prefixes this long, then 8 times longer, up to the whole text: a
# refusal is found after reading at most 8 times as far as where it is (a text opening with its
# limit's brackets, within the first 16 KiB), and a text within the limit costs at most about
# twice one pass (the prefixes before the whole text add up to less than 8/7 of the last); a
# body up to 16 KiB (a single enqueue, a batch of ~200 short messages) is read once.
_FIRST_PREFIX = 16 * 1024
_PREFIX_GROWTH = 8


def _not_json(constant: str) -> None:
    """`json.loads` takes NaN and Infinity; JSON has neither (and they cannot be answered)."""
    raise JsonProblem(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400, which float() makes infinite
        raise JsonProblem(f"number {quoted(text)} is out of range")
    return value


# One decoder for every call (`json.loads` with hooks builds a new one each time).
# strict (the default) must stay: the nesting check ends a string at a raw newline, which is
# safe only because the decoder refuses a raw newline inside a string before reading past it.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def loads(text: str, *, max_depth: int) -> Any:
    """The JSON value in `text`, nested at most `max_depth` levels (a top-level object or array
    is the first); raises JsonProblem (JsonTooDeep for the nesting)."""
    _refuse_nesting_deeper_than(text, max_depth)
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as problem:
        raise JsonProblem(problem.msg, problem.lineno, problem.colno) from None
    except JsonProblem:
        raise
    except ValueError:  # an integer of over 4300 digits (int() refuses to convert it)
        raise _long_integer_problem(text) from None


def loads_bytes(raw: bytes, *, max_depth: int) -> Any:
    """The JSON value in `raw` (see `loads`), decoded as `json.loads` decodes bytes; raises
    JsonProblem also for text that does not decode and for a string holding a lone UTF-16
    surrogate (it parses, but can be neither counted nor stored)."""
    try:
        # surrogatepass: a lone surrogate's raw bytes are kept, to be refused below by name.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as problem:
        raise JsonProblem(str(problem)) from None
    data = loads(text, max_depth=max_depth)
    try:
        # It comes in as raw bytes or as an escape (`"\ud800"`); only for an escape is the parsed
        # value encoded again (the request path of every enqueue runs this).
        text.encode()
        if "\\u" in text:
            json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise JsonProblem("a string holds a lone UTF-16 surrogate") from None
    return data


class _LongInteger:
    """An integer too long to convert, as the decoder met it (for `_long_integer_problem`)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _long_integer_problem(text: str) -> JsonProblem:
    """The refusal of a text holding an integer of more digits than Python converts, naming the
    field that holds it (the decoder's own error names none, and tells the sender to call
    `sys.set_int_max_str_digits()`). Only a refused text is decoded this second time."""
    limit = sys.get_int_max_str_digits()

    def parse_int(digits: str) -> int | _LongInteger:
        length = len(digits.lstrip("-"))
        return _LongInteger(length) if limit and length > limit else int(digits)

    decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite, parse_int=parse_int)
    expected = f"expected an integer of at most {limit} digits"
    # In document order, without recursion (the nesting was measured, but only against the
    # caller's limit).
    try:
        document = decoder.decode(text)
    except json.JSONDecodeError as problem:  # the text is also malformed after the integer
        return JsonProblem(problem.msg, problem.lineno, problem.colno)
    except JsonProblem as problem:  # NaN, or a float out of range, after the integer
        return problem
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _LongInteger):
            found = f"an integer of {value.digits} digits; {expected}"
            return JsonProblem(f"field {quoted(path)}: {found}" if path else found)
        if isinstance(value, dict):
            items = [(f"{path}.{key}" if path else key, v) for key, v in value.items()]
        elif isinstance(value, list):
            items = [
                (f"{path}.{index}" if path else str(index), v) for index, v in enumerate(value)
            ]
        else:
            continue
        pending.extend(reversed(items))
    # Its field was written twice and the later value kept: the text is refused all the same.
    return JsonProblem(f"an integer of over {limit} digits; {expected}")


def _refuse_nesting_deeper_than(text: str, max_depth: int) -> None:
    """Raise JsonTooDeep, naming the line, if brackets outside strings nest past `max_depth`;
    measured on growing prefixes, each reduced to its brackets and newlines by the regular
    expression engine (no Python loop per token). A prefix's reduction is the start of the whole
    text's, so a prefix nesting too deep is a refusal of the text."""
    size = _FIRST_PREFIX
    while True:
        prefix = text[:size]
        # No deeper than its opening brackets (strings' included) are many: a prefix with few
        # of them, such as every ordinary request body, needs no reduction.
        if prefix.count("[") + prefix.count("{") > max_depth:
            reduced = _NOT_BRACKET.sub("", _STRING.sub("", prefix))
            if max(_depths(reduced), default=0) > max_depth:
                _refuse(reduced, max_depth)
        if size >= len(text):
            return
        size *= _PREFIX_GROWTH


def _depths(reduced: str) -> Iterator[int]:
    return accumulate(map(_DEPTH_STEP.__getitem__, reduced))


def _refuse(reduced: str, max_depth: int) -> NoReturn:
    """Raise JsonTooDeep for `reduced` (brackets and newlines), naming the line where the
    nesting first passes `max_depth`; raises even if it does not, so a text measured too deep
    never reaches the recursive decoder."""
    try:
        first = operator.indexOf(map(max_depth.__lt__, _depths(reduced)), True)
        line: int | None = reduced.count("\n", 0, first) + 1
    except ValueError:  # not found: the measure above disagrees; refused all the same
        line = None
    raise JsonTooDeep(f"nested deeper than {max_depth} levels; refused", line)
