"""Where task data comes from: a file shipped in ``mechbench/data`` or a user's file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
