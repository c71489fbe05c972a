"""The sinks analysis's own figures for the report and notebooks.

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures (the per-head heatmaps beyond those are
for the notebooks: the report draws a heatmap of every head metric itself).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.plots import rows_of

from .rows import (
    ACT_ACCURACY,
    ACT_SEARCH_DELTA,
    HIDDEN_SINK_COUNT,
    HIDDEN_SINK_TOKEN,
    MASSIVE_ACTIVATION,
    SINK_RATE,
    SINK_SCORE_MEAN,
    STREAMING_TOKEN_NLL,
)


def sink_score_heatmap(frame: pd.DataFrame, position: int = 0) -> go.Figure | None:
    """Layer x head heatmap of the mean sink score at ``position`` (Gu et al. 2024; 0: the first token)."""
    mean = rows_of(frame, SINK_SCORE_MEAN)
    rows = mean[mean["position"] == position]
    if rows.empty:
        return None
    return plots.head_heatmap(rows, f"Sink score at position {position}", "sink score")


def sink_rate(frame: pd.DataFrame) -> go.Figure | None:
    """Sink rate Sink_k by position: the share of heads whose sink score there exceeds ε."""
    rate = rows_of(frame, SINK_RATE)
    if rate.empty:
        return None
    epsilon = rate["epsilon"].iloc[0] if "epsilon" in rate else None
    return plots.position_profile(rate, f"Sink rate Sink_k (ε = {epsilon})", "% of heads")


def hidden_sink_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Layer x head heatmap of the hidden sinks (ACT) a head has per input."""
    counts = rows_of(frame, HIDDEN_SINK_COUNT)
    if counts.empty:
        return None
    return plots.head_heatmap(counts, "Hidden sinks per input", "count")


def hidden_sink_tokens(frame: pd.DataFrame) -> go.Figure | None:
    """Table of the tokens that most often become hidden sinks."""
    tokens = rows_of(frame, HIDDEN_SINK_TOKEN)
    if tokens.empty:
        return None
    return plots.token_table(tokens, "Tokens that become hidden sinks")


def massive_activations(frame: pd.DataFrame) -> go.Figure | None:
    """Largest and median residual-stream magnitude per layer (Sun et al. 2024)."""
    if rows_of(frame, MASSIVE_ACTIVATION).empty:
        return None
    return plots.massive_activation_profile(frame)


def act_search_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Layer x head heatmap of the ACT head search: the accuracy change when one head is calibrated."""
    search = rows_of(frame, ACT_SEARCH_DELTA)
    if search.empty:
        return None
    return plots.head_heatmap(search, "Accuracy change when one head is calibrated", "Δ accuracy")


def act_accuracy(frame: pd.DataFrame) -> go.Figure | None:
    """ACT: task accuracy per split with and without the calibration."""
    accuracy = rows_of(frame, ACT_ACCURACY)
    if accuracy.empty:
        return None
    return plots.grouped_bars(accuracy, "split", "condition", "ACT: accuracy with and without calibration",
                              "accuracy")


def streaming_loss(frame: pd.DataFrame) -> go.Figure | None:
    """StreamingLLM: rolling mean of the next-token loss per window cache (with and without the sink tokens)."""
    stream = rows_of(frame, STREAMING_TOKEN_NLL)
    if stream.empty:
        return None
    return plots.rolling_lines(stream, "cache", "StreamingLLM: next-token loss (rolling mean)", value_label="nats")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Sink rate by position, hidden-sink tokens, massive activations, ACT accuracy, StreamingLLM loss."""
    drawn = (sink_rate(frame), hidden_sink_tokens(frame), massive_activations(frame), act_accuracy(frame),
             streaming_loss(frame))
    return [figure for figure in drawn if figure is not None]
