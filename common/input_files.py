"""Reading a file a person wrote or pointed a tool at (rules, workflows, service profiles,
notification channels, experiments, target files, the agent's targets, a `testbed.json`): bytes →
UTF-8 → one parsed YAML or JSON document of the expected shape, every loader the same way.

Whatever is wrong (no such file, a directory, not UTF-8, too large, not YAML/JSON, nested too
deep, aliases that expand too far, empty, a list where a mapping belongs) raises the loader's own
error class with one line that starts with the file's name and says what was expected; nothing
reaches the caller as a traceback, and no message quotes more than a few dozen characters of the
file. Not for: validating the document's fields (see `validation`), or files programs write for
each other (journals, the actuator's records), which are read where they are written.
"""

from __future__ import annotations

import codecs
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from common import bounded_json, bounded_yaml
from common.errors import InputFileError, JsonProblem
from common.validation import bounded, kind_of

# Hand-written files here are a few kB; a generated testbed.json of 64 shards is under 100 kB.
# The cap keeps a wrong path (a log, a disk image) from being read and parsed for minutes.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = bounded_yaml.MAX_DEPTH

ErrorClass = Callable[[str], Exception]


def read_text(path: Path, *, error: ErrorClass = InputFileError) -> str:
    """The file's text, decoded as UTF-8 (a leading byte-order mark is dropped)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as problem:
        raise error(f"{path}: cannot read it: {problem.strerror or problem}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{path}: is a directory; expected a file")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise error(f"{path}: not a regular file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as problem:
        raise error(f"{path}: cannot read it: {problem.strerror or problem}") from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB; refused")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        line = data.count(b"\n", 0, problem.start) + 1
        raise error(
            f"{path}: not UTF-8 text (byte 0x{data[problem.start]:02x} on line {line}); "
            "expected a UTF-8 file"
        ) from None


def parse(
    text: str,
    source: str,
    *,
    expected: str,
    shape: type | tuple[type, ...] = dict,
    as_json: bool = False,
    error: ErrorClass = InputFileError,
) -> Any:
    """The one document in `text` (YAML, or JSON with `as_json`), of type `shape`. `expected`
    says in words what the file should hold; `source` names the file in messages."""
    document = _parse_json(text, source, error) if as_json else _parse_yaml(text, source, error)
    return _of_shape(document, source, expected, shape, error)


def parse_documents(
    text: str, source: str, *, expected: str, error: ErrorClass = InputFileError
) -> list[Any]:
    """Every YAML document in `text` that is not empty; at least one."""
    try:
        documents = [d for d in bounded_yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as problem:
        raise error(f"{source}: not valid YAML: {_yaml_problem(problem)}") from None
    if not documents:
        raise error(f"{source}: the file is empty; expected {expected}")
    return documents


def load(
    path: Path,
    *,
    expected: str,
    shape: type | tuple[type, ...] = dict,
    as_json: bool | None = None,
    error: ErrorClass = InputFileError,
) -> Any:
    """`parse` of the file at `path`; JSON when its name ends in .json, unless `as_json`."""
    text = read_text(path, error=error)
    json_file = path.suffix == ".json" if as_json is None else as_json
    return parse(text, str(path), expected=expected, shape=shape, as_json=json_file, error=error)


def yaml_files(directory: Path, *, what: str, error: ErrorClass = InputFileError) -> list[Path]:
    """The *.yaml and *.yml files in `directory`, sorted by name; `what` names them."""
    try:
        if not directory.exists():
            raise error(f"{directory}: no such directory")
        if not directory.is_dir():
            raise error(f"{directory}: not a directory; expected a directory of {what} (*.yaml)")
        return sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"})
    except OSError as problem:  # not listable (permissions), a name too long, ...
        raise error(f"{directory}: cannot read it: {problem.strerror or problem}") from None


def _of_shape(
    document: Any, source: str, expected: str, shape: type | tuple[type, ...], error: ErrorClass
) -> Any:
    if document is None:
        raise error(f"{source}: the file is empty; expected {expected}")
    if not isinstance(document, shape):
        raise error(f"{source}: expected {expected}, not {kind_of(document)}")
    return document


def _parse_yaml(text: str, source: str, error: ErrorClass) -> Any:
    try:
        return bounded_yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{source}: not valid YAML: {_yaml_problem(problem)}") from None


def _yaml_problem(problem: yaml.YAMLError) -> str:
    """One line: where, what, and in what (PyYAML's own text spans lines and quotes the file)."""
    if isinstance(problem, yaml.reader.ReaderError) and isinstance(problem.character, int):
        return (
            f"character {problem.position + 1}: unacceptable character "
            f"#x{problem.character:04x} ({problem.reason})"
        )
    if isinstance(problem, yaml.MarkedYAMLError) and problem.problem:
        mark = problem.problem_mark or problem.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({problem.context})" if problem.context else ""
        return bounded(f"{where}{problem.problem}{context}", 300)
    return bounded(" ".join(str(problem).split()), 300)


def _parse_json(text: str, source: str, error: ErrorClass) -> Any:
    if not text.strip():
        return None  # json.loads would say "Expecting value"; the file is empty
    try:
        return bounded_json.loads(text, max_depth=MAX_DEPTH)
    except JsonProblem as problem:
        raise error(f"{source}: not valid JSON: {problem}") from None
