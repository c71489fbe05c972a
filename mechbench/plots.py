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


def token_table(frame: pd.DataFrame, title: str, top: int = 20) -> go.Figure:
    """Table of the most frequent tokens of a per-token metric (columns ``token``, ``value``, counts)."""
    rows = frame.sort_values(["value", "token"], ascending=[False, True]).head(top)
    columns = [c for c in ("token", "value", "n_examples", "n_heads") if c in rows]
    figure = go.Figure(go.Table(header={"values": columns},
                                cells={"values": [rows[c].map(repr) if c == "token" else rows[c] for c in columns]}))
    figure.update_layout(title=title, height=120 + 24 * len(rows))
    return figure


def massive_activation_profile(frame: pd.DataFrame, title: str = "Residual-stream magnitudes") -> go.Figure:
    """Per layer: the largest ``|h|`` (``massive_activation`` rank 0, max over examples) and the median
    ``|h|`` (``resid_abs_median``, mean over examples), on a log axis (Sun et al. 2024, Fig. 2)."""
    top = frame[(frame["metric"] == "massive_activation") & (frame["rank"] == 0)].groupby("layer")["value"].max()
    median = frame[frame["metric"] == "resid_abs_median"].groupby("layer")["value"].mean()
    figure = go.Figure([go.Scatter(x=top.index, y=top.to_numpy(), mode="lines+markers", name="top |h|"),
                        go.Scatter(x=median.index, y=median.to_numpy(), mode="lines+markers", name="median |h|")])
    figure.update_layout(title=title, xaxis_title="layer", yaxis_title="|h|", yaxis_type="log", height=360)
    return figure


def grouped_bars(frame: pd.DataFrame, x: str, group: str, title: str, value_label: str = "value") -> go.Figure:
    """Bars of ``value`` by ``x``, one colour per ``group`` (e.g. accuracy by split and condition)."""
    figure = go.Figure([go.Bar(x=part[x], y=part["value"], name=str(name)) for name, part in frame.groupby(group)])
    figure.update_layout(title=title, barmode="group", yaxis_title=value_label, height=360)
    return figure


def rolling_lines(frame: pd.DataFrame, group: str, title: str, window: int = 32,
                  value_label: str = "value") -> go.Figure:
    """Rolling mean of a per-position metric, one line per ``group`` (e.g. loss per cache policy)."""
    figure = go.Figure()
    for name, part in frame.sort_values("position").groupby(group):
        smooth = part["value"].rolling(window, min_periods=1).mean()
        figure.add_trace(go.Scatter(x=part["position"], y=smooth, mode="lines", name=str(name)))
    figure.update_layout(title=title, xaxis_title="token position", yaxis_title=value_label, height=360)
    return figure


def niah_grid(frame: pd.DataFrame, title: str, value_label: str = "NIAH success") -> go.Figure:
    """Context length x needle depth heatmap of a per-trial metric (columns ``context_length``,
    ``depth``, ``value``), averaged over needles: the needle-in-a-haystack picture."""
    grid = frame.pivot_table(index="depth", columns="context_length", values="value", aggfunc="mean").sort_index()
    figure = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[str(int(c)) for c in grid.columns], y=[f"{int(d)}%" for d in grid.index],
        colorscale="RdYlGn", zmin=0, zmax=1, colorbar={"title": value_label},
        hovertemplate="length %{x}, depth %{y}<br>" + value_label + " %{z:.2f}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="needle depth",
                         height=max(320, 30 * len(grid.index) + 140))
    return figure


def masking_curve(frame: pd.DataFrame, title: str, value_label: str = "NIAH success") -> go.Figure:
    """``value`` against the number of masked heads ``k``, one line per ``condition`` (mean over
    ``draw``, error bars to the lowest and highest draw); the unmasked ``none`` row is drawn at k = 0
    on every line."""
    figure = go.Figure()
    baseline = frame[frame["condition"] == "none"]
    for condition, part in frame[frame["condition"] != "none"].groupby("condition"):
        stats = pd.concat([baseline, part]).groupby("k")["value"].agg(["mean", "min", "max"]).sort_index()
        figure.add_trace(go.Scatter(
            x=stats.index, y=stats["mean"], mode="lines+markers", name=str(condition),
            error_y={"type": "data", "symmetric": False, "array": stats["max"] - stats["mean"],
                     "arrayminus": stats["mean"] - stats["min"]}))
    figure.update_layout(title=title, xaxis_title="masked heads (k)", yaxis_title=value_label, height=360)
    return figure


def token_profile(frame: pd.DataFrame, title: str, group: str | None = None, value_label: str = "value") -> go.Figure:
    """A per-token metric of one example along its positions (columns ``position``, ``token``, ``value``),
    one line per ``group`` value, the tokens on the x axis; rows with ``is_peak`` get a marker."""
    ordered = frame.sort_values("position")
    parts = ordered.groupby(group, sort=False) if group is not None else [(value_label, ordered)]
    figure = go.Figure()
    for name, part in parts:
        figure.add_trace(go.Scatter(x=part["position"], y=part["value"], mode="lines", name=str(name),
                                    customdata=part["token"],
                                    hovertemplate="position %{x}: %{customdata}<br>%{y:.4f}<extra></extra>"))
        if "is_peak" in part:
            peaks = part[part["is_peak"].fillna(False).astype(bool)]
            figure.add_trace(go.Scatter(x=peaks["position"], y=peaks["value"], mode="markers", name=f"{name} peaks",
                                        marker={"size": 9, "symbol": "diamond"}))
    ticks = ordered.drop_duplicates("position")
    figure.update_layout(title=title, yaxis_title=value_label, height=380,
                         xaxis={"title": "token", "tickmode": "array", "tickvals": ticks["position"].tolist(),
                                "ticktext": ticks["token"].tolist(), "tickangle": -60})
    return figure


def line_plot(frame: pd.DataFrame, x: str, title: str, group: str | None = None, x_label: str | None = None,
              value_label: str = "value") -> go.Figure:
    """``value`` against column ``x`` (e.g. ``layer``, ``k``), one line per ``group`` value (mean over any
    other rows with the same ``x``)."""
    parts = frame.groupby(group, sort=True) if group is not None else [(value_label, frame)]
    figure = go.Figure()
    for name, part in parts:
        line = part.groupby(x)["value"].mean().sort_index()
        figure.add_trace(go.Scatter(x=line.index, y=line.to_numpy(), mode="lines+markers", name=str(name)))
    figure.update_layout(title=title, xaxis_title=x_label or x, yaxis_title=value_label, height=360,
                         showlegend=group is not None)
    return figure


def head_scatter(frame: pd.DataFrame, x: str, y: str, title: str, color: str | None = None) -> go.Figure:
    """One point per head of a wide frame (columns ``layer``, ``head``, ``x``, ``y``), coloured by the
    category ``color``; hover shows the head."""
    parts = frame.groupby(color, sort=True) if color is not None else [("heads", frame)]
    figure = go.Figure()
    for name, part in parts:
        labels = [f"L{int(la)} H{int(h)}" for la, h in zip(part["layer"], part["head"], strict=True)]
        figure.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=str(name), text=labels,
                                    hovertemplate="%{text}<br>" + x + " %{x:.3f}<br>" + y + " %{y:.3f}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=400)
    return figure
