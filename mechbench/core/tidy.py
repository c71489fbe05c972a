"""Turn metric tensors into tidy rows (one observation per row), shared by every analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch


def to_tidy(values: torch.Tensor | np.ndarray, axes: Sequence[str],
            coords: dict[str, Sequence[Any]] | None = None, drop_nan: bool = True,
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


def complete_columns(frame: pd.DataFrame, ints: Sequence[str] = (), texts: Sequence[str] = ()) -> pd.DataFrame:
    """``frame`` with every column of ``ints`` present as nullable ``Int64`` and every column of ``texts``
    present (all-null where no row set it), so runs with different options write the same columns."""
    for column in ints:
        if column not in frame:
            frame[column] = pd.NA
        frame[column] = frame[column].astype("Int64")
    for column in texts:
        if column not in frame:
            frame[column] = None
    return frame
