"""The retrieval analysis's own figures for the report and notebooks.

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures (the retrieval-score heatmap is for the
notebooks: the report draws a heatmap of every head metric itself).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.retrieval.rows import (
    MASKING_ROUGE1_RECALL,
    MASKING_SUCCESS_RATE,
    NIAH_SUCCESS,
    RETRIEVAL_SCORE,
    ROUGE1_RECALL,
)
from mechbench.plots import rows_of


def retrieval_score_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Layer x head heatmap of the retrieval score (Wu et al. 2024), titled with the number of trials counted."""
    scores = rows_of(frame, RETRIEVAL_SCORE)
    if scores.empty:
        return None
    return plots.head_heatmap(scores, f"Retrieval score ({int(scores['n_trials'].iloc[0])} trials counted)",
                              "retrieval score")


def niah_success(frame: pd.DataFrame) -> go.Figure | None:
    """Needle-in-a-haystack success (ROUGE-1 recall > 0.5) by context length and needle depth."""
    rows = rows_of(frame, NIAH_SUCCESS)
    return None if rows.empty else plots.niah_grid(rows, "NIAH success (ROUGE-1 recall > 0.5)", "NIAH success")


def niah_recall(frame: pd.DataFrame) -> go.Figure | None:
    """ROUGE-1 recall of the answer by context length and needle depth."""
    rows = rows_of(frame, ROUGE1_RECALL)
    return None if rows.empty else plots.niah_grid(rows, "ROUGE-1 recall of the answer", "recall")


def masking_success(frame: pd.DataFrame) -> go.Figure | None:
    """NIAH success against the number of masked heads, top-K retrieval heads vs K random heads."""
    rows = rows_of(frame, MASKING_SUCCESS_RATE)
    return None if rows.empty else plots.masking_curve(rows, "NIAH success with heads masked", "NIAH success")


def masking_recall(frame: pd.DataFrame) -> go.Figure | None:
    """ROUGE-1 recall against the number of masked heads, top-K retrieval heads vs K random heads."""
    rows = rows_of(frame, MASKING_ROUGE1_RECALL)
    return None if rows.empty else plots.masking_curve(rows, "ROUGE-1 recall with heads masked", "recall")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Needle-in-a-haystack grids and the masking curves."""
    drawn = (niah_success(frame), niah_recall(frame), masking_success(frame), masking_recall(frame))
    return [figure for figure in drawn if figure is not None]
