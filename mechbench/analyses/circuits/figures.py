"""The circuits analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.circuits.rows import (
    ACT_PATCH_NOISING,
    ATTR_PATCH,
    EAP,
    EAP_IG,
    FAITHFULNESS_CURVE,
    OVERLAP_METRICS,
)
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Attribution vs activation patching, the edge circuit of each task, the faithfulness curves, overlap vs
    its baseline."""
    out = []
    scores = frame[frame["metric"].isin([ACT_PATCH_NOISING, ATTR_PATCH])]
    if set(scores["metric"]) == {ACT_PATCH_NOISING, ATTR_PATCH}:
        out.append(plots.method_scatter(scores, ACT_PATCH_NOISING, ATTR_PATCH,
                                        "Attribution vs activation patching (per node)"))
    edge_metric = EAP_IG if (frame["metric"] == EAP_IG).any() else EAP
    edges = rows_of(frame, edge_metric)
    for task in sorted(edges["task"].dropna().unique()):
        out.append(plots.circuit_graph(edges[edges["task"] == task], f"{edge_metric} circuit — {task}"))
    curve = rows_of(frame, FAITHFULNESS_CURVE)
    if not curve.empty:
        out.append(plots.line_plot(curve, "circuit_size", "Faithfulness vs circuit size (top-k items)", group="task",
                                   x_label="items kept (edges or nodes)", value_label="normalised faithfulness",
                                   log_x=True))
    overlaps = frame[frame["metric"].isin(list(OVERLAP_METRICS))]
    if "head_class" in overlaps:
        overlaps = overlaps[overlaps["head_class"].isna()]
    if not overlaps.empty:
        out.append(plots.overlap_bars(overlaps, "Circuit overlap vs permutation baseline"))
    return out
