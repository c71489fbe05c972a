"""The speech analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.speech.rows import LOG_MEL, WER, XATTN_SALIENCY_PEARSON
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """The correlation table per aggregation level (as in Papi et al. 2025), per-layer correlations, the word
    error rates and the spectrogram overlay of the first token of the first utterance with maps."""
    out = []
    pearson = rows_of(frame, XATTN_SALIENCY_PEARSON)
    if not pearson.empty:
        out.append(plots.correlation_table(pearson.assign(view=pearson["level"]),
                                           "Cross-attention vs log-mel saliency per aggregation level"))
        by_layer = pearson[pearson["level"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
        out.append(plots.grouped_bars(by_layer, "layer", "method", "Per-layer cross-attention vs saliency",
                                      "mean Pearson r"))
    wer = rows_of(frame, WER)
    if not wer.empty:
        out.append(plots.grouped_bars(wer.assign(kind="WER"), "example", "kind", "Word error rate", "WER"))
    mel = rows_of(frame, LOG_MEL)
    if not mel.empty:
        out.append(plots.spectrogram_overlay(frame, str(mel["example"].iloc[0]), 0))
    return out
