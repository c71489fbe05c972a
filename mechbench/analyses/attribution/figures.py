"""The attribution analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.attribution.rows import ATTENTION, ATTRIBUTION, DELETION, GROUNDING_SHARE, PEARSON
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Token heatmap of the first example, attention vs IG scatter, the correlation table, per-layer
    agreement, deletion curves and the grounding shares."""
    out = []
    if frame.empty:
        return out
    example = frame["example"].dropna().iloc[0]
    rows = frame[frame["example"] == example]
    tokens = pd.concat([rows_of(rows, ATTRIBUTION).assign(row=lambda f: f["method"]),
                        rows[(rows["metric"] == ATTENTION) & rows["view"].isin(["all", "rollout"])]
                        .assign(row=lambda f: "attention " + f["view"])])
    if not tokens.empty:
        out.append(plots.token_heatmap(tokens, f"Attribution and attention on {example!r}", row="row"))
    prompt = frame[(frame["segment"] == "prompt") & (frame["position"] > 0)]
    attention = prompt[(prompt["metric"] == ATTENTION) & (prompt["view"] == "all")]
    gradients = prompt[(prompt["metric"] == ATTRIBUTION) & (prompt["method"] == "integrated_gradients")]
    if not attention.empty and not gradients.empty:
        columns = ["example", "position", "token", "value"]
        out.append(plots.attention_scatter(attention[columns], gradients[columns], "All-layer attention vs |IG|"))
    pearson = rows_of(frame, PEARSON)
    if not pearson.empty:
        out.append(plots.correlation_table(pearson, "Attention vs attribution (Pearson r)"))
        by_layer = pearson[pearson["view"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
        if not by_layer.empty:
            out.append(plots.grouped_bars(by_layer, "layer", "method", "Per-layer attention vs attribution",
                                          "mean Pearson r"))
    deletion = rows_of(frame, DELETION)
    if not deletion.empty:
        out.append(plots.perturbation_curves(deletion, "Deletion curves (mean over examples)", "target"))
    shares = rows_of(frame, GROUNDING_SHARE)
    if not shares.empty:
        shares = shares[shares["cited"].fillna(False).astype(bool)]
        shares = shares[shares["view"].isin(["all", "rollout"]) | shares["method"].notna()]
        shares = shares.assign(source=shares["method"].fillna("attention " + shares["view"].fillna("")))
        bars = pd.concat([shares.groupby("source", as_index=False)["value"].mean().assign(kind="cited passage"),
                          shares.groupby("source", as_index=False)["length_share"].mean()
                          .rename(columns={"length_share": "value"}).assign(kind="length share (chance)")])
        out.append(plots.grouped_bars(bars, "source", "kind", "Share on the cited passage", "mean share"))
    return out
