"""Where task data comes from: a file shipped in ``mechbench/data`` or a user's file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, overload

from mechbench.errors import DatasetError


def read_source(source: str, builtin: str, data_file: str, not_found: str,
                suffixes: tuple[str, ...] = ()) -> tuple[str, Path | None]:
    """``(text, path)``: the shipped ``data_file`` when ``source == builtin`` (path None), else the user's
    file ``source``. Raises DatasetError ``not_found`` when that file does not exist or, with
    ``suffixes``, has another suffix."""
    if source == builtin:
        return resources.files("mechbench.data").joinpath(data_file).read_text(), None
    path = Path(source).expanduser()
    if not path.is_file() or (suffixes and path.suffix not in suffixes):
        raise DatasetError(not_found)
    return path.read_text(encoding="utf-8"), path


def jsonl_records(source: str, builtin: str, data_file: str, what: str,
                  fields: str) -> list[tuple[int, dict[str, Any], str]]:
    """``(line number, record, where)`` of each JSON-object line of the shipped ``data_file`` (``source ==
    builtin``) or the user's ``.jsonl`` file; a missing ``id`` becomes ``{what}-{i}``. Raises DatasetError on a
    missing file, a line that is not an object, no lines or duplicate ids (``fields`` lists the expected keys)."""
    text, path = read_source(source, builtin, data_file, f"{what} file {source!r} not found or not .jsonl; give "
                             f"'builtin' or an existing .jsonl file of {{{fields}}} lines", suffixes=(".jsonl",))
    where = f"the built-in {what} set" if path is None else str(path)
    records: list[tuple[int, dict[str, Any], str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise DatasetError(f"{where} line {number} is not a JSON object of {{{fields}}}")
        record["id"] = str(record.get("id", f"{what}-{len(records)}"))
        records.append((number, record, where))
    if not records:
        raise DatasetError(f"{where} is empty; give at least one {{{fields}}} line")
    if len({r["id"] for _, r, _ in records}) != len(records):
        raise DatasetError(f"{where} has duplicate ids; give every line a unique 'id'")
    return records


@overload
def text_field(record: dict[str, Any], field: str, number: int, where: str,
               required: Literal[True] = ...) -> str: ...
@overload
def text_field(record: dict[str, Any], field: str, number: int, where: str, required: bool) -> str | None: ...


def text_field(record: dict[str, Any], field: str, number: int, where: str, required: bool = True) -> str | None:
    """The non-empty string ``record[field]`` (None when absent and not ``required``), else DatasetError."""
    value = record.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where} line {number}: '{field}' must be a non-empty string")
    return value
