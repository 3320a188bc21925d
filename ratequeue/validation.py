"""How a pydantic validation error is told to a person: one problem after another, each naming
the field (or setting) and what was expected. Every package's strict loaders use it, so bad
input reads the same everywhere. Not for: validating anything."""

from __future__ import annotations

from pydantic import ValidationError


def describe_problems(error: ValidationError, what: str = "field") -> str:
    """`field 'a.b': <what was wrong>; field 'c': ...` (or `setting '...'`)."""
    return "; ".join(
        f"{what} '{'.'.join(str(part) for part in problem['loc'])}': {problem['msg']}"
        for problem in error.errors()
    )
