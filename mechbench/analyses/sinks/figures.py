"""The sinks analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.plots import rows_of

from .rows import ACT_ACCURACY, HIDDEN_SINK_TOKEN, MASSIVE_ACTIVATION, SINK_RATE, STREAMING_TOKEN_NLL


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Sink rate by position, hidden-sink tokens, massive activations, ACT accuracy, StreamingLLM loss."""
    out = []
    rate = rows_of(frame, SINK_RATE)
    if not rate.empty:
        epsilon = rate["epsilon"].iloc[0] if "epsilon" in rate else None
        out.append(plots.position_profile(rate, f"Sink rate Sink_k (ε = {epsilon})", "% of heads"))
    tokens = rows_of(frame, HIDDEN_SINK_TOKEN)
    if not tokens.empty:
        out.append(plots.token_table(tokens, "Tokens that become hidden sinks"))
    if not rows_of(frame, MASSIVE_ACTIVATION).empty:
        out.append(plots.massive_activation_profile(frame))
    accuracy = rows_of(frame, ACT_ACCURACY)
    if not accuracy.empty:
        out.append(plots.grouped_bars(accuracy, "split", "condition", "ACT: accuracy with and without calibration",
                                      "accuracy"))
    stream = rows_of(frame, STREAMING_TOKEN_NLL)
    if not stream.empty:
        out.append(plots.rolling_lines(stream, "cache", "StreamingLLM: next-token loss (rolling mean)",
                                       value_label="nats"))
    return out
