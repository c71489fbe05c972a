"""The speech analysis's own figures for the report and notebooks (beyond the per-head heatmaps).

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures (the per-token correlation is for the
notebooks).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.speech.rows import LOG_MEL, WER, XATTN_SALIENCY_PEARSON, XATTN_SALIENCY_PREFIX
from mechbench.plots import rows_of

#: per-token Pearson r of the cross-attention with saliency over the encoder frames
XATTN_SALIENCY_PEARSON_TOKEN = XATTN_SALIENCY_PREFIX + "pearson_token"


def correlation_table(frame: pd.DataFrame) -> go.Figure | None:
    """Cross-attention vs saliency Pearson r, mean ± sd over utterances, per aggregation level (Papi et al. 2025)."""
    pearson = rows_of(frame, XATTN_SALIENCY_PEARSON)
    if pearson.empty:
        return None
    return plots.correlation_table(pearson.assign(view=pearson["level"]),
                                   "Cross-attention vs log-mel saliency per aggregation level")


def per_layer_correlation(frame: pd.DataFrame) -> go.Figure | None:
    """Mean Pearson r of each decoder layer's cross-attention vs saliency, one bar per saliency method."""
    pearson = rows_of(frame, XATTN_SALIENCY_PEARSON)
    if pearson.empty:
        return None
    by_layer = pearson[pearson["level"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
    return plots.grouped_bars(by_layer, "layer", "method", "Per-layer cross-attention vs saliency", "mean Pearson r")


def word_error_rates(frame: pd.DataFrame) -> go.Figure | None:
    """Word error rate of each utterance's transcript."""
    wer = rows_of(frame, WER)
    if wer.empty:
        return None
    return plots.grouped_bars(wer.assign(kind="WER"), "example", "kind", "Word error rate", "WER")


def first_utterance(frame: pd.DataFrame) -> str | None:
    """The first utterance with a stored spectrogram (``log_mel`` rows); None if there is none."""
    mel = rows_of(frame, LOG_MEL)
    return None if mel.empty else str(mel["example"].iloc[0])


def spectrogram(frame: pd.DataFrame, example: str | None = None, position: int = 0) -> go.Figure | None:
    """The log-mel spectrogram of ``example`` (default :func:`first_utterance`) with the cross-attention and
    saliency maps of the generated token at ``position`` over its frames."""
    example = first_utterance(frame) if example is None else example
    if example is None:
        return None
    return plots.spectrogram_overlay(frame, example, position)


def per_token_correlation(frame: pd.DataFrame) -> go.Figure | None:
    """Per generated token, the Pearson r of the all-layer cross-attention with each saliency map over the frames."""
    per_token = rows_of(frame, XATTN_SALIENCY_PEARSON_TOKEN)
    per_token = per_token[per_token["level"] == "all"]
    if per_token.empty:
        return None
    return plots.line_plot(per_token, "position", "Per-token cross-attention vs saliency (all layers)", group="method",
                           x_label="generated token", value_label="Pearson r")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """The correlation table per aggregation level (as in Papi et al. 2025), per-layer correlations, the word
    error rates and the spectrogram overlay of the first token of the first utterance with maps."""
    drawn = (correlation_table(frame), per_layer_correlation(frame), word_error_rates(frame), spectrogram(frame))
    return [figure for figure in drawn if figure is not None]
