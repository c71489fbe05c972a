"""plotly figure builders. Every figure takes a tidy frame (never raw tensors)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def rows_of(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of one metric."""
    return frame[frame["metric"] == metric]


def head_heatmap(frame: pd.DataFrame, title: str, value_label: str = "value") -> go.Figure:
    """Layer x head heatmap of per-head rows (columns ``layer``, ``head``, ``value``; one row per head)."""
    grid = frame.pivot_table(index="layer", columns="head", values="value", aggfunc="mean").sort_index()
    figure = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"H{int(h)}" for h in grid.columns], y=[f"L{int(layer)}" for layer in grid.index],
        colorscale="Viridis", colorbar={"title": value_label},
        hovertemplate="layer %{y}, head %{x}<br>" + value_label + " %{z:.4f}<extra></extra>"))
    figure.update_layout(title=escape_label(title), xaxis_title="head", yaxis_title="layer",
                         yaxis_autorange="reversed", height=max(320, 22 * len(grid.index) + 140))
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
                                cells={"values": [rows[c].map(display_token) if c == "token" else rows[c]
                                                for c in columns]}))
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
    figure.update_layout(title=title, barmode="group", xaxis_title=x, yaxis_title=value_label, height=360)
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
                                    customdata=part["token"].map(display_token),
                                    hovertemplate="position %{x}: %{customdata}<br>%{y:.4f}<extra></extra>"))
        if "is_peak" in part:
            peaks = part[part["is_peak"].fillna(False).astype(bool)]
            figure.add_trace(go.Scatter(x=peaks["position"], y=peaks["value"], mode="markers", name=f"{name} peaks",
                                        marker={"size": 9, "symbol": "diamond"}))
    ticks = ordered.drop_duplicates("position")
    figure.update_layout(title=escape_label(title), yaxis_title=value_label, height=380,
                         xaxis={"title": "token", "tickmode": "array", "tickvals": ticks["position"].tolist(),
                                "ticktext": ticks["token"].map(display_token).tolist(),
                                "tickangle": -60})
    return figure


def escape_label(text: object) -> str:
    """Text from the data (an example id, a task name) for a plotly title, legend or label: ``& < >`` as
    entities, since plotly reads labels as (a subset of) HTML: ``<b>`` would turn bold and ``<script>``
    vanish; escaped, the text is shown exactly as it is."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def display_token(token: str) -> str:
    """Token text for a plotly label: escaped (:func:`escape_label`), with spaces as ``·``, newlines as
    ``⏎`` and tabs as ``⇥`` (else invisible)."""
    return escape_label(token).replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥")


def attention_explorer(frame: pd.DataFrame, example: str, title: str | None = None) -> go.Figure:
    """Attention pattern of one example with a slider over every (layer, head): queries down, keys
    across, the tokens on both axes (rows of the ``patterns`` analysis: ``layer``, ``head``,
    ``position``, ``key_position``, ``token``, ``value``). Works offline and in notebooks; no server."""
    rows = frame[frame["example"] == example]
    if rows.empty:
        raise ValueError(f"no attention rows for example {example!r}")
    tokens = rows.drop_duplicates("position").sort_values("position")
    labels = [display_token(str(t)) for t in tokens["token"]]
    length = len(labels)
    heads = rows[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"])
    grids = {}
    for (layer, head), part in rows.groupby(["layer", "head"]):
        grid = part.pivot(index="position", columns="key_position", values="value")
        grid = grid.reindex(index=range(length), columns=range(length))
        grids[(int(layer), int(head))] = grid.round(4).to_numpy()
    keys = [(int(layer), int(head)) for layer, head in heads.itertuples(index=False)]
    first = keys[0]
    figure = go.Figure(go.Heatmap(
        z=grids[first], x=list(range(length)), y=list(range(length)), zmin=0, zmax=1, colorscale="Blues",
        colorbar={"title": "attention"}, customdata=[[(q, k) for k in labels] for q in labels],
        hovertemplate="query %{y} %{customdata[0]}<br>key %{x} %{customdata[1]}<br>attention %{z:.4f}<extra></extra>"))
    name = escape_label(title or f"Attention of {example}")
    steps = [{"label": f"L{layer}H{head}", "method": "update",
              "args": [{"z": [grids[(layer, head)]]}, {"title.text": f"{name}: layer {layer}, head {head}"}]}
             for layer, head in keys]
    axis = {"tickmode": "array", "tickvals": list(range(length)), "ticktext": labels, "tickfont": {"size": 9}}
    figure.update_layout(
        title=f"{name}: layer {first[0]}, head {first[1]}", height=max(460, 16 * length + 220),
        xaxis={**axis, "title": "key token", "tickangle": -60, "side": "top"},
        yaxis={**axis, "title": "query token", "autorange": "reversed"},
        sliders=[{"active": 0, "currentvalue": {"prefix": "head: "}, "steps": steps, "pad": {"t": 30}}])
    return figure


def depth_profile(tables: dict[str, pd.DataFrame], column: str) -> go.Figure:
    """Mean (solid) and maximum (dashed) over heads of one head metric per layer, against relative
    depth ``layer / (layers - 1)``, one colour per model (``tables``: model -> wide head table)."""
    figure = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for index, (model, table) in enumerate(tables.items()):
        per_layer = table.groupby("layer")[column].agg(["mean", "max"])
        depth = per_layer.index / max(int(table["layer"].max()), 1)
        colour = palette[index % len(palette)]
        figure.add_trace(go.Scatter(x=depth, y=per_layer["mean"], mode="lines+markers", name=f"{model} mean",
                                    line={"color": colour}))
        figure.add_trace(go.Scatter(x=depth, y=per_layer["max"], mode="lines", name=f"{model} max",
                                    line={"color": colour, "dash": "dash"}))
    figure.update_layout(title=f"{column} by relative depth", xaxis_title="relative depth (layer / (layers − 1))",
                         yaxis_title=column, height=380)
    return figure


def head_distribution(tables: dict[str, pd.DataFrame], column: str) -> go.Figure:
    """Every head's value of one head metric, one box (with the heads as points) per model."""
    figure = go.Figure([go.Box(y=table[column], name=model, boxpoints="all", jitter=0.4, pointpos=0,
                               text=[f"L{int(a)}H{int(b)}" for a, b in zip(table["layer"], table["head"], strict=True)],
                               hovertemplate="%{text}: %{y:.4f}<extra></extra>")
                        for model, table in tables.items()])
    figure.update_layout(title=f"{column}: every head", xaxis_title="model", yaxis_title=column, height=380)
    return figure


def patching_heatmap(frame: pd.DataFrame, title: str, value_label: str = "normalised effect") -> go.Figure:
    """Layer x head heatmap of signed per-head patching scores, diverging colours centred on 0."""
    figure = head_heatmap(frame, title, value_label)
    figure.update_traces(colorscale="RdBu", zmid=0.0)
    return figure


def method_scatter(frame: pd.DataFrame, x: str, y: str, title: str) -> go.Figure:
    """Per-node scores of two methods against each other (columns ``metric``, ``node``, ``task``, ``value``),
    with the identity line; one colour per task."""
    table = frame[frame["metric"].isin([x, y])].pivot_table(index=["task", "node"], columns="metric",
                                                             values="value").dropna().reset_index()
    figure = go.Figure([go.Scatter(x=part[x], y=part[y], mode="markers", name=escape_label(task), text=part["node"],
                                   hovertemplate="%{text}: %{x:.3f}, %{y:.3f}<extra></extra>")
                        for task, part in table.groupby("task")])
    if len(table):
        low, high = float(table[[x, y]].min().min()), float(table[[x, y]].max().max())
        figure.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                                    line={"dash": "dot", "color": "grey"}))
    figure.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=420)
    return figure


def _graph_position(label: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    node = label.split(".")[0]
    if node == "input":
        return (n_heads / 2, -1.0)
    if node == "logits":
        return (n_heads / 2, float(n_layers))
    if node.startswith("MLP"):
        return (float(n_heads), int(node[3:]) + 0.4)
    layer, head = node[1:].split("H")
    return (float(head), float(layer))


def circuit_graph(frame: pd.DataFrame, title: str) -> go.Figure:
    """The edges of a circuit (rows with ``sender``, ``receiver``, ``value``, ``in_circuit``; e.g. EAP rows),
    nodes placed by layer (up) and head (across), line width by |score|, labels ``L1H0.k`` drawn at
    their head with the channel in the hover text."""
    kept = frame[frame["in_circuit"].fillna(False).astype(bool)] if "in_circuit" in frame else frame
    labels = sorted({*kept["sender"], *(r.split(".")[0] for r in kept["receiver"])})
    heads = [lab for lab in labels if lab.startswith("L")]
    n_heads = 1 + max([int(lab.split("H")[1]) for lab in heads] or [0])
    n_layers = 1 + max([int(lab[1:].split("H")[0]) for lab in heads] +
                       [int(lab[3:]) for lab in labels if lab.startswith("MLP")] or [0])
    position = {lab: _graph_position(lab, n_heads, n_layers) for lab in labels}
    scale = float(kept["value"].abs().max()) if len(kept) else 1.0
    figure = go.Figure()
    for row in kept.itertuples():
        (x0, y0), (x1, y1) = position[row.sender], position[row.receiver.split(".")[0]]
        figure.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
            text=f"{row.sender} → {row.receiver}: {row.value:.4f}",
            line={"width": 1 + 6 * abs(row.value) / (scale or 1.0), "color": "firebrick" if row.value < 0 else
                  "steelblue"}))
    figure.add_trace(go.Scatter(x=[position[lab][0] for lab in labels], y=[position[lab][1] for lab in labels],
                                mode="markers+text", text=labels, textposition="top center", showlegend=False,
                                marker={"size": 12, "color": "black"}))
    figure.update_layout(title=escape_label(title), xaxis={"title": "head", "showgrid": False},
                         yaxis={"title": "layer", "showgrid": False}, height=max(360, 60 * (n_layers + 2)))
    return figure


def overlap_bars(frame: pd.DataFrame, title: str) -> go.Figure:
    """Observed overlap statistics per task pair next to their permutation baseline (columns ``task``,
    ``metric``, ``value``, ``baseline``, ``p_value``)."""
    figure = go.Figure()
    labels = [f"{escape_label(t)}<br>{m}" for t, m in zip(frame["task"], frame["metric"], strict=True)]
    figure.add_trace(go.Bar(x=labels, y=frame["value"], name="observed",
                            text=[f"p={p:.3g}" for p in frame["p_value"]], textposition="outside"))
    figure.add_trace(go.Bar(x=labels, y=frame["baseline"], name="random sets (mean)"))
    figure.update_layout(title=title, barmode="group", yaxis_title="overlap", yaxis_range=[0, 1.15], height=400)
    return figure


# ---------------------------------------------------------------------------- attribution (issue 8)
def token_heatmap(frame: pd.DataFrame, title: str, row: str = "method") -> go.Figure:
    """Tokens of one example along x, one row per ``row`` value (e.g. method / view), colour = ``value``
    scaled to ``[-1, 1]`` per row by its largest ``|value|`` (columns ``position``, ``token``, ``value``, ``row``)."""
    grid = frame.pivot_table(index=row, columns="position", values="value", aggfunc="mean")
    scaled = grid.div(grid.abs().max(axis=1).replace(0, 1), axis=0)
    tokens = frame.drop_duplicates("position").set_index("position")["token"].reindex(grid.columns)
    figure = go.Figure(go.Heatmap(
        z=scaled.to_numpy(), x=[f"{p}:{display_token(str(t))}" for p, t in zip(grid.columns, tokens, strict=True)],
        y=[str(r) for r in grid.index], customdata=grid.to_numpy(), colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
        colorbar={"title": "value / max|value|"},
        hovertemplate="%{y} at %{x}<br>value %{customdata:.4g}<extra></extra>"))
    figure.update_layout(title=escape_label(title), xaxis={"tickangle": -60},
                         height=max(260, 40 * len(grid.index) + 180))
    return figure


def attention_scatter(attention: pd.DataFrame, attribution: pd.DataFrame, title: str,
                      absolute: bool = True) -> go.Figure:
    """Attention (x) against attribution (y) per token, one point per (example, position), coloured by example.

    Both frames have ``example``, ``position``, ``value`` (one view, one method); ``absolute`` plots ``|attribution|``.
    """
    merged = attention.merge(attribution, on=["example", "position"], suffixes=("_attention", "_attribution"))
    if absolute:
        merged["value_attribution"] = merged["value_attribution"].abs()
    figure = go.Figure([go.Scatter(x=part["value_attention"], y=part["value_attribution"], mode="markers",
                                   name=escape_label(example),
                                   text=[display_token(str(t)) for t in part.get("token_attention", [])],
                                   hovertemplate="%{text}<br>attention %{x:.4f}<br>attribution %{y:.4g}<extra></extra>")
                        for example, part in merged.groupby("example")])
    figure.update_layout(title=title, xaxis_title="attention", yaxis_title=("|attribution|" if absolute
                                                                            else "attribution"), height=420)
    return figure


def correlation_table(frame: pd.DataFrame, title: str, value_label: str = "mean Pearson r") -> go.Figure:
    """Mean (± sd over examples) of a per-example agreement metric, one row per ``view`` (aggregation level)
    and one column per ``method``, as in Papi et al. 2025's tables."""
    stats = frame.groupby(["view", "method"])["value"].agg(["mean", "std"]).reset_index()
    cells = stats.assign(text=[f"{m:.3f} ± {s:.3f}" if pd.notna(s) else f"{m:.3f}"
                               for m, s in zip(stats["mean"], stats["std"], strict=True)])
    table = cells.pivot(index="view", columns="method", values="text")
    figure = go.Figure(go.Table(header={"values": ["view", *table.columns]},
                                cells={"values": [table.index.tolist(), *[table[c].tolist() for c in table.columns]]}))
    figure.update_layout(title=f"{title} ({value_label})", height=140 + 28 * len(table))
    return figure


def perturbation_curves(frame: pd.DataFrame, title: str, value_label: str = "target") -> go.Figure:
    """Deletion or insertion curves: mean ``value`` over examples against ``fraction``, one line per ``ranking``
    (the random-order baseline dashed)."""
    figure = go.Figure()
    for ranking, part in frame.groupby("ranking"):
        mean = part.groupby("step").agg(fraction=("fraction", "mean"), value=("value", "mean"))
        figure.add_trace(go.Scatter(x=mean["fraction"], y=mean["value"], mode="lines+markers", name=str(ranking),
                                    line={"dash": "dash"} if ranking == "random" else None))
    figure.update_layout(title=title, xaxis_title="fraction of prompt tokens removed / inserted",
                         yaxis_title=value_label, height=380)
    return figure


def line_plot(frame: pd.DataFrame, x: str, title: str, group: str | None = None, x_label: str | None = None,
              value_label: str = "value", log_x: bool = False) -> go.Figure:
    """``value`` against column ``x`` (e.g. ``layer``, ``k``), one line per ``group`` value (mean over any
    other rows with the same ``x``); ``log_x`` for sizes that grow geometrically."""
    parts = frame.groupby(group, sort=True) if group is not None else [(value_label, frame)]
    figure = go.Figure()
    for name, part in parts:
        line = part.groupby(x)["value"].mean().sort_index()
        figure.add_trace(go.Scatter(x=line.index, y=line.to_numpy(), mode="lines+markers", name=str(name)))
    figure.update_layout(title=title, xaxis_title=x_label or x, yaxis_title=value_label, height=360,
                         showlegend=group is not None)
    if log_x:
        figure.update_xaxes(type="log")
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


# ---------------------------------------------------------------------------- speech (issue 8)
def spectrogram_overlay(frame: pd.DataFrame, example: str, position: int, title: str | None = None) -> go.Figure:
    """Log-mel spectrogram of one utterance (``log_mel`` rows: ``mel``, ``frame``) with, for the generated token at
    ``position``, the all-layer cross-attention and each saliency map over the encoder frames (``cross_attention``
    / ``saliency_<method>`` rows), each scaled to its maximum, as lines on a second axis."""
    rows = frame[frame["example"] == example]
    mel = rows[rows["metric"] == "log_mel"].pivot_table(index="mel", columns="frame", values="value")
    figure = go.Figure(go.Heatmap(z=mel.to_numpy(), x=mel.columns.to_numpy(), y=mel.index.to_numpy(),
                                  colorscale="Greys", reversescale=True, showscale=False, name="log-mel",
                                  hovertemplate="frame %{x}, mel %{y}<br>log-mel %{z:.2f}<extra></extra>"))
    overlays = rows[rows["metric"].isin(["cross_attention"]) | rows["metric"].str.startswith("saliency_")]
    overlays = overlays[overlays["position"] == position]
    for metric, part in overlays.groupby("metric"):
        line = part.sort_values("frame")
        scale = line["value"].abs().max() or 1.0
        figure.add_trace(go.Scatter(x=line["frame"], y=line["value"] / scale, mode="lines", yaxis="y2",
                                    name=str(metric).replace("_", " ")))
    token = overlays["token"].dropna().iloc[0] if overlays["token"].notna().any() else str(position)
    figure.update_layout(
        title=escape_label(title or f"{example}: token {position} {display_token(str(token))!r}"),
        xaxis_title="encoder frame (20 ms)", yaxis_title="mel bin",
        yaxis2={"overlaying": "y", "side": "right", "range": [0, 1.05], "title": "value / max"},
        height=420, legend={"orientation": "h", "y": -0.2})
    return figure
