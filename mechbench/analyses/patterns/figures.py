"""The patterns analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.plots import rows_of

from .rows import METRIC


def attention_explorer(frame: pd.DataFrame, example: str) -> go.Figure | None:
    """The attention pattern of one example, a slider over every head (None without its rows)."""
    rows = rows_of(frame, METRIC)
    if not (rows["example"] == str(example)).any():
        return None
    return plots.attention_explorer(rows, str(example))


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """One attention explorer per example (a slider over every head)."""
    rows = rows_of(frame, METRIC)
    drawn = (attention_explorer(rows, str(example)) for example in rows["example"].drop_duplicates())
    return [figure for figure in drawn if figure is not None]
