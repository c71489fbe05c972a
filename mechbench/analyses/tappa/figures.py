"""The tappa analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.tappa.rows import KV_BUDGET, PREDICTABILITY, PRUNE_NLL, Q_SIMILARITY, Q_SIMILARITY_PRUNE
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """q-sim per layer, q-sim vs predictability per head, KV budgets and pruning curves."""
    out = []
    layers = frame[frame["metric"].isin([Q_SIMILARITY, Q_SIMILARITY_PRUNE]) & frame["head"].isna()]
    if not layers.empty:
        out.append(plots.line_plot(layers, "layer", "q-similarity per layer", group="variant", value_label="q_sim"))
    heads = frame[(frame["metric"] == Q_SIMILARITY) & frame["head"].notna()]
    predictability = rows_of(frame, PREDICTABILITY)
    if not heads.empty and not predictability.empty:
        wide = heads.rename(columns={"value": "q_sim"})[["layer", "head", "q_sim"]].merge(
            predictability[["layer", "head", "value", "pattern_type"]].rename(columns={"value": PREDICTABILITY}),
            on=["layer", "head"])
        out.append(plots.head_scatter(wide, "q_sim", PREDICTABILITY, "q-sim vs pattern predictability, per head",
                                      color="pattern_type"))
    budgets = rows_of(frame, KV_BUDGET)
    if not budgets.empty:
        budgets = budgets.assign(policy=budgets["policy"] + " @ " + budgets["budget"].astype(str))
        out.append(plots.line_plot(budgets, "layer", "KV budget per layer", group="policy",
                                   value_label="kept tokens"))
    prune = rows_of(frame, PRUNE_NLL)
    if not prune.empty:
        base = prune[prune["method"] == "none"]
        curves = pd.concat([prune[prune["method"] != "none"], base.assign(method="bi"), base.assign(method="tappa")])
        out.append(plots.line_plot(curves, "k", "Held-out loss after removing k layers", group="method",
                                   x_label="layers removed", value_label="next-token loss (nats)"))
    return out
