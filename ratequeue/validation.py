"""How a pydantic validation error, or a bad value, is told to a person: one problem after
another, each naming the field (or setting) and what was expected, and a value quoted only cut
short (`clip`). Every package's strict loaders and services use it, so bad input reads the same
everywhere. Not for: validating anything."""

from __future__ import annotations

from pydantic import ValidationError

# A value quoted back is cut to this many characters, so no input makes an answer (or a log line
# quoting it) as large as itself.
CLIP = 80


def clip(value: object, limit: int = CLIP) -> str:
    """`repr` of a value someone sent, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def describe_problems(error: ValidationError, what: str = "field") -> str:
    """`field 'a.b': <what was wrong>; field 'c': ...` (or `setting '...'`)."""
    return "; ".join(
        f"{what} '{'.'.join(str(part) for part in problem['loc'])}': {problem['msg']}"
        for problem in error.errors()
    )
