"""plotly figure builders. Every figure takes a tidy frame (never raw tensors)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def head_heatmap(frame: pd.DataFrame, title: str, value_label: str = "value") -> go.Figure:
    """Layer x head heatmap of per-head rows (columns ``layer``, ``head``, ``value``; one row per head)."""
    grid = frame.pivot_table(index="layer", columns="head", values="value", aggfunc="mean").sort_index()
    figure = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"H{int(h)}" for h in grid.columns], y=[f"L{int(layer)}" for layer in grid.index],
        colorscale="Viridis", colorbar={"title": value_label},
        hovertemplate="layer %{y}, head %{x}<br>" + value_label + " %{z:.4f}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed",
                         height=max(320, 22 * len(grid.index) + 140))
    return figure


def position_profile(frame: pd.DataFrame, title: str, value_label: str = "value") -> go.Figure:
    """Line plot of a per-position metric (columns ``position``, ``value``)."""
    ordered = frame.sort_values("position")
    figure = go.Figure(go.Scatter(x=ordered["position"], y=ordered["value"], mode="lines+markers"))
    figure.update_layout(title=title, xaxis_title="token position", yaxis_title=value_label, height=320)
    return figure
