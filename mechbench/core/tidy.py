"""Turn metric tensors into tidy rows (one observation per row), shared by every analysis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch


def to_tidy(values: torch.Tensor | np.ndarray, axes: Sequence[str],
            coords: Mapping[str, Sequence[Any]] | None = None, drop_nan: bool = True,
            **constants: Any) -> pd.DataFrame:
    """Long-form frame of ``values``: one row per element, a column per axis, plus ``value``.

    ``axes`` names every dimension (e.g. ``("layer", "head", "position")``); ``coords`` optionally
    gives the labels along an axis (default ``0..n-1``, e.g. example ids); ``constants`` become
    columns with one value for all rows (``metric="sink_score"``). NaN entries (e.g. positions past
    an example's length) are dropped unless ``drop_nan`` is False.
    """
    array = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != len(axes):
        raise ValueError(f"values has {array.ndim} dimensions but {len(axes)} axis names were given: {axes}")
    coords = coords or {}
    grids = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    data: dict[str, Any] = {}
    for axis, grid in zip(axes, grids, strict=True):
        flat = grid.reshape(-1)
        data[axis] = np.asarray(coords[axis], dtype=object)[flat] if axis in coords else flat
    data["value"] = array.reshape(-1).astype(np.float64)
    frame = pd.DataFrame(data)
    if drop_nan:
        frame = frame[~np.isnan(frame["value"].to_numpy())]
    for name, constant in constants.items():
        frame[name] = constant
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class ExtraColumns:
    """An analysis's own columns beyond the core schema, and their dtypes (declared in its ``SPEC``)."""

    #: nullable ``Int64`` where present (counts, indices)
    ints: tuple[str, ...] = ()
    #: nullable ``boolean`` where present (flags)
    booleans: tuple[str, ...] = ()
    #: added (all-null) when no row set them, so that runs with different options write the same columns
    always: tuple[str, ...] = ()


def finish_rows(frame: pd.DataFrame, analysis: str, model: str, columns: ExtraColumns = ExtraColumns()
                ) -> pd.DataFrame:
    """The one finishing step of every runner: stamp ``analysis`` and ``model`` on every row and give the
    core columns (``docs/store.md``) and the analysis's own ``columns`` the dtypes the store keeps, so a
    runner's frame and the store's read of it have the same dtypes."""
    from mechbench.store.schema import CORE_COLUMNS  # here: the store package loads pyarrow

    for column in columns.always:
        if column not in frame:
            frame[column] = pd.NA if column in columns.ints else None
    for names, dtype in ((columns.ints, "Int64"), (columns.booleans, "boolean")):
        for column in names:
            if column in frame:
                frame[column] = frame[column].astype(dtype)
    frame["analysis"] = analysis
    frame["model"] = model
    for column, dtype in CORE_COLUMNS.items():
        if column in frame:
            frame[column] = frame[column].astype(dtype)
    return frame
