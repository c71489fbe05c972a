"""The retrieval analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.retrieval.rows import MASKING_ROUGE1_RECALL, MASKING_SUCCESS_RATE, NIAH_SUCCESS, ROUGE1_RECALL
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Needle-in-a-haystack grids and the masking curves."""
    out = []
    for metric, title, label in ((NIAH_SUCCESS, "NIAH success (ROUGE-1 recall > 0.5)", "NIAH success"),
                                 (ROUGE1_RECALL, "ROUGE-1 recall of the answer", "recall")):
        if not rows_of(frame, metric).empty:
            out.append(plots.niah_grid(rows_of(frame, metric), title, label))
    for metric, title, label in ((MASKING_SUCCESS_RATE, "NIAH success with heads masked", "NIAH success"),
                                 (MASKING_ROUGE1_RECALL, "ROUGE-1 recall with heads masked", "recall")):
        if not rows_of(frame, metric).empty:
            out.append(plots.masking_curve(rows_of(frame, metric), title, label))
    return out
