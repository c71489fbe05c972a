"""The head-roles analysis's own figures: one heatmap of each score over layers and heads."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.plots import rows_of

from .rows import INDUCTION_SCORE, PREVIOUS_TOKEN_SCORE


def previous_token_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Previous-token score per head (Olsson et al. 2022)."""
    rows = rows_of(frame, PREVIOUS_TOKEN_SCORE)
    return None if rows.empty else plots.head_heatmap(rows, "Previous-token score (mean A[t, t-1])", "score")


def induction_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Induction score per head on the repeated-block probe (Olsson et al. 2022)."""
    rows = rows_of(frame, INDUCTION_SCORE)
    return None if rows.empty else plots.head_heatmap(rows, "Induction score (mean A[t, t-L+1] on [BOS] r r)",
                                                      "score")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Both heatmaps, those whose rows the run has."""
    return [f for f in (previous_token_heatmap(frame), induction_heatmap(frame)) if f is not None]
