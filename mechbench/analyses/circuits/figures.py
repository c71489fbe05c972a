"""The circuits analysis's own figures for the report and notebooks.

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws (a list for the figures drawn once per task); :func:`figures` composes the report's
figures (the per-task patching heatmaps are for the notebooks: the report draws a heatmap of every head
metric itself).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def patching_heatmap(frame: pd.DataFrame, task: str, metric: str) -> go.Figure | None:
    """Layer x head heatmap of one patching score (e.g. ``act_patch_noising``) of one task, diverging around 0."""
    rows = frame[(frame["metric"] == metric) & (frame["task"] == task) & frame["head"].notna()]
    if rows.empty:
        return None
    return plots.patching_heatmap(rows, f"{metric} — {task}")


def patching_heatmaps(frame: pd.DataFrame,
                      metrics: Sequence[str] = (ACT_PATCH_NOISING, ATTR_PATCH)) -> list[go.Figure]:
    """:func:`patching_heatmap` of each task (in sorted order) and each of ``metrics`` the run has."""
    tasks = sorted(frame.loc[frame["head"].notna(), "task"].dropna().unique())
    drawn = (patching_heatmap(frame, task, metric) for task in tasks for metric in metrics)
    return [figure for figure in drawn if figure is not None]


def patching_agreement(frame: pd.DataFrame) -> go.Figure | None:
    """Per node, the attribution-patching estimate against the exact activation-patching (noising) score."""
    scores = frame[frame["metric"].isin([ACT_PATCH_NOISING, ATTR_PATCH])]
    if set(scores["metric"]) != {ACT_PATCH_NOISING, ATTR_PATCH}:
        return None
    return plots.method_scatter(scores, ACT_PATCH_NOISING, ATTR_PATCH, "Attribution vs activation patching (per node)")


def edge_metric(frame: pd.DataFrame) -> str:
    """The edge scores the circuit graphs draw: ``eap_ig`` where the run has them, else ``eap``."""
    return EAP_IG if (frame["metric"] == EAP_IG).any() else EAP


def edge_circuit(frame: pd.DataFrame, task: str) -> go.Figure | None:
    """The edge circuit of one task (its :func:`edge_metric` edges), nodes placed by layer and head."""
    metric = edge_metric(frame)
    edges = rows_of(frame, metric)
    edges = edges[edges["task"] == task]
    if edges.empty:
        return None
    return plots.circuit_graph(edges, f"{metric} circuit — {task}")


def edge_circuits(frame: pd.DataFrame) -> list[go.Figure]:
    """:func:`edge_circuit` of every task with edge scores, in sorted order."""
    tasks = sorted(rows_of(frame, edge_metric(frame))["task"].dropna().unique())
    drawn = (edge_circuit(frame, task) for task in tasks)
    return [figure for figure in drawn if figure is not None]


def faithfulness_curves(frame: pd.DataFrame) -> go.Figure | None:
    """Normalised faithfulness of the top-k items against k (log axis), one line per task."""
    curve = rows_of(frame, FAITHFULNESS_CURVE)
    if curve.empty:
        return None
    return plots.line_plot(curve, "circuit_size", "Faithfulness vs circuit size (top-k items)", group="task",
                           x_label="items kept (edges or nodes)", value_label="normalised faithfulness", log_x=True)


def overlap_bars(frame: pd.DataFrame) -> go.Figure | None:
    """Overlap of every two tasks' circuits (all heads, no head class) next to the permutation baseline."""
    overlaps = frame[frame["metric"].isin(list(OVERLAP_METRICS))]
    if "head_class" in overlaps:
        overlaps = overlaps[overlaps["head_class"].isna()]
    if overlaps.empty:
        return None
    return plots.overlap_bars(overlaps, "Circuit overlap vs permutation baseline")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Attribution vs activation patching, the edge circuit of each task, the faithfulness curves, overlap vs
    its baseline."""
    drawn = [patching_agreement(frame), *edge_circuits(frame), faithfulness_curves(frame), overlap_bars(frame)]
    return [figure for figure in drawn if figure is not None]
