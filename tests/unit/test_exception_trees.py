"""Each package's exceptions form one tree with one base, drawn in its `errors` module's
docstring: a new exception that is not on the drawing, or not under the base, fails here."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

BASES = {
    "common": "CommonError",
    "ratequeue": "RatequeueError",
    "notifications": "NotificationError",
    "detection": "DetectionError",
    "lazarus_lite": "LazarusError",
    "chaos": "ChaosError",
}
# Raised inside PyYAML's loader as YAML errors (callers see InputFileError); not the package's.
YAML_INTERNALS = {"common.bounded_yaml.AliasBomb", "common.bounded_yaml.TooDeep"}
WORD = re.compile(r"[A-Za-z_]\w*")


def exceptions_defined_in(package: str) -> list[type[BaseException]]:
    root = importlib.import_module(package)
    found = []
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
                and f"{info.name}.{name}" not in YAML_INTERNALS
            ):
                found.append(value)
    return found


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_exception_of_a_package_lives_in_its_errors_module_under_one_base(
    package: str,
) -> None:
    errors = importlib.import_module(f"{package}.errors")
    base = getattr(errors, BASES[package])
    for error in exceptions_defined_in(package):
        assert error.__module__ == f"{package}.errors", (
            f"{error.__qualname__} in {error.__module__}"
        )
        assert issubclass(error, base), f"{error.__qualname__} is not a {base.__name__}"


def drawn_parents(drawing: str, classes: set[str]) -> dict[str, str | None]:
    """Each class on the drawing and the class drawn above it (None for the root). A line whose
    first word is not a class (a heading grouping some) passes its parent on to its children."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str | None]] = []  # (column of the branch, class or heading's parent)
    for line in drawing.splitlines():
        branch = max(line.find("├── "), line.find("└── "))
        if branch >= 0:
            depth, rest = branch + 1, line[branch + 4 :]
        elif line.strip() in classes:
            depth, rest = 0, line.strip()
        else:
            continue
        name = WORD.match(rest)
        if name is None:
            continue
        while stack and stack[-1][0] >= depth:
            stack.pop()
        above = stack[-1][1] if stack else None
        if name.group() in classes:
            parents[name.group()] = above
            stack.append((depth, name.group()))
        else:
            stack.append((depth, above))
    return parents


@pytest.mark.parametrize("package", sorted(BASES))
def test_the_tree_in_the_errors_docstring_draws_every_exception_under_its_base_class(
    package: str,
) -> None:
    errors = importlib.import_module(f"{package}.errors")
    defined = {error.__name__: error for error in exceptions_defined_in(package)}
    drawn = drawn_parents(errors.__doc__ or "", set(defined) | {"CommonError", "ServiceError"})
    for name, error in defined.items():
        assert name in drawn, f"{package}/errors.py's drawing does not show {name}"
        parent = drawn[name]
        if parent is not None:
            assert parent in [base.__name__ for base in error.__bases__], (
                f"{package}/errors.py draws {name} under {parent}; its bases are "
                f"{[base.__name__ for base in error.__bases__]}"
            )
