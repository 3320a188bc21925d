"""Reading a file a person wrote: the checks that come before any loader's fields (its size, its
kind, JSON nesting counted without being fooled by strings, in time linear in the file)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from common import input_files
from common.errors import InputFileError


def test_brackets_inside_json_strings_are_not_nesting() -> None:
    text = '{"a": "' + "[" * 500 + '\\"{{{", "b": [1]}'
    assert input_files.parse(text, "f.json", expected="a mapping", as_json=True)["b"] == [1]


def test_an_unterminated_json_string_of_escaped_quotes_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(InputFileError, match=r"f\.json: not valid JSON: line 1"):
        input_files.parse('"' + '\\"' * 500_000 + "\\", "f.json", expected="a", as_json=True)
    assert time.monotonic() - started < 2


def test_a_file_over_the_size_limit_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (input_files.MAX_FILE_BYTES + 1))
    with pytest.raises(InputFileError, match=rf"{path}: larger than 4 MiB"):
        input_files.read_text(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    with pytest.raises(InputFileError, match=rf"{path}: not a regular file"):
        input_files.read_text(path)


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert input_files.load(path, expected="a mapping") == {"a": 1}


def test_a_directory_that_cannot_be_listed_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)  # as root, a chmod would not stop the listing
    with pytest.raises(InputFileError, match=f"{tmp_path}: cannot read it: Permission denied"):
        input_files.yaml_files(tmp_path, what="rule files")


@pytest.mark.parametrize("value", ["NaN", "-Infinity", "1e400"])
def test_a_json_file_holding_a_number_json_cannot_carry_is_refused(value: str) -> None:
    with pytest.raises(InputFileError, match=r"f\.json: not valid JSON: .*(JSON value|range)"):
        input_files.parse(f'{{"a": {value}}}', "f.json", expected="a mapping", as_json=True)
