"""Each package's exceptions form one tree with one base, drawn in its `errors` module's
docstring: a new exception that is not on the drawing, or not under the base, fails here."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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
YAML_INTERNALS = {"AliasBomb", "TooDeep"}


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
                and name not in YAML_INTERNALS
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


@pytest.mark.parametrize("package", sorted(BASES))
def test_the_tree_in_the_errors_docstring_names_every_exception(package: str) -> None:
    errors = importlib.import_module(f"{package}.errors")
    drawing = errors.__doc__ or ""
    for error in exceptions_defined_in(package):
        assert f" {error.__name__} " in drawing or f" {error.__name__}\n" in drawing, (
            f"{package}/errors.py's drawing does not show {error.__name__}"
        )
