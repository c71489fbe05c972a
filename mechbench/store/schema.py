"""The tidy schema every analysis writes: one observation per row.

See ``docs/store.md``. The core columns are fixed; analyses may add their own columns (e.g.
``context_length``, ``token``). :func:`conform` checks and coerces a frame to the schema so that
every partition of the store has identical dtypes and a round trip through Parquet is exact.
"""

from __future__ import annotations

import pandas as pd

from mechbench.errors import StoreError, one_line

#: Core columns in order, with their pandas dtypes (nullable where a value may be missing).
CORE_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "analysis": "string",
    "metric": "string",
    "model": "string",
    "layer": "Int64",
    "head": "Int64",
    "example": "string",
    "position": "Int64",
    "value": "float64",
}

#: Columns that must be filled on every row (the others are nullable by design).
REQUIRED_NON_NULL = ("run_id", "analysis", "metric", "model")

#: Version of the on-disk layout; a store written by a newer mechbench is refused, not misread.
STORE_FORMAT_VERSION = 1


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with core columns first, in schema dtypes; raise StoreError if it cannot be.

    Missing nullable core columns are added as all-null; extra columns keep their dtype (object
    columns of strings become ``string``).
    """
    if not isinstance(frame, pd.DataFrame):
        raise StoreError(f"expected a pandas DataFrame of tidy rows, got {type(frame).__name__}")
    unnamed = [c for c in frame.columns if not isinstance(c, str)]
    if unnamed:
        raise StoreError(f"result frame has non-string column name(s) {unnamed}; name every column with a string")
    duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if duplicated:
        raise StoreError(f"result frame has duplicate column(s) {duplicated}; give every column its own name")
    missing_required = [c for c in REQUIRED_NON_NULL if c not in frame.columns]
    if missing_required:
        raise StoreError(f"result frame lacks required column(s) {missing_required}; every row needs "
                         f"{list(REQUIRED_NON_NULL)}")
    out = frame.copy()
    for column, dtype in CORE_COLUMNS.items():
        if column not in out.columns:
            out[column] = pd.Series(None, index=out.index, dtype=dtype)  # NaN for float64, else <NA>
            continue
        try:
            out[column] = out[column].astype(dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"column {column!r} cannot be stored as {dtype} ({one_line(exc)}); "
                             f"give it {dtype} values") from None
    for column in REQUIRED_NON_NULL:
        if out[column].isna().any():
            raise StoreError(f"column {column!r} has missing values; it must be set on every row")
    extra = [c for c in out.columns if c not in CORE_COLUMNS]
    for column in extra:
        if out[column].dtype == object:
            out[column] = out[column].astype("string")
    return out[list(CORE_COLUMNS) + extra].reset_index(drop=True)
