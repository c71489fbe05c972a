"""The tappa analysis's own figures for the report and notebooks.

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures (the q-sim heatmap and the RoPE band view
are for the notebooks: the report draws a heatmap of every head metric itself).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.tappa.rows import (
    KV_BUDGET,
    PREDICTABILITY,
    PRUNE_NLL,
    Q_SIMILARITY,
    Q_SIMILARITY_PRUNE,
    ROPE_BAND_SHARE,
)
from mechbench.plots import rows_of


def _head_q_similarity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["metric"] == Q_SIMILARITY) & frame["head"].notna()]


def q_similarity_per_layer(frame: pd.DataFrame) -> go.Figure | None:
    """q-sim averaged over the heads of each layer, one line per variant (``kv``, ``prune``)."""
    layers = frame[frame["metric"].isin([Q_SIMILARITY, Q_SIMILARITY_PRUNE]) & frame["head"].isna()]
    if layers.empty:
        return None
    return plots.line_plot(layers, "layer", "q-similarity per layer", group="variant", value_label="q_sim")


def q_similarity_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Layer x head heatmap of q-sim (the ``kv`` variant, the one with per-head rows)."""
    heads = _head_q_similarity(frame)
    if heads.empty:
        return None
    return plots.head_heatmap(heads, "q-similarity per head (kv variant)", "q_sim")


def qsim_predictability(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per head: ``q_sim``, ``predictability`` and the head's ``pattern_type`` (empty without either)."""
    heads = _head_q_similarity(frame)
    predictability = rows_of(frame, PREDICTABILITY)
    return heads.rename(columns={"value": "q_sim"})[["layer", "head", "q_sim"]].merge(
        predictability[["layer", "head", "value", "pattern_type"]].rename(columns={"value": PREDICTABILITY}),
        on=["layer", "head"])


def qsim_vs_predictability(frame: pd.DataFrame) -> go.Figure | None:
    """Per head, q-sim against the pattern predictability, coloured by the pattern type."""
    if _head_q_similarity(frame).empty or rows_of(frame, PREDICTABILITY).empty:
        return None
    return plots.head_scatter(qsim_predictability(frame), "q_sim", PREDICTABILITY,
                              "q-sim vs pattern predictability, per head", color="pattern_type")


def rope_band_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean share of the attended-key logit advantage per (``pattern_type``, RoPE ``band``), over the heads of
    each pattern type (empty for a model without rotary positions)."""
    bands = rows_of(frame, ROPE_BAND_SHARE)
    if bands.empty:
        return pd.DataFrame(columns=["pattern_type", "band", "value"])
    typed = bands.merge(qsim_predictability(frame)[["layer", "head", "pattern_type"]], on=["layer", "head"])
    return typed.groupby(["pattern_type", "band"], as_index=False)["value"].mean()


def rope_bands(frame: pd.DataFrame) -> go.Figure | None:
    """Share of the attended-key logit advantage by RoPE band (band 0: highest frequencies), per pattern type."""
    shares = rope_band_shares(frame)
    if shares.empty:
        return None
    return plots.grouped_bars(shares, "band", "pattern_type", "Share of the attended-key logit advantage by RoPE band",
                              "share")


def kv_budgets(frame: pd.DataFrame) -> go.Figure | None:
    """Kept prompt tokens per layer, one line per (policy, total budget)."""
    budgets = rows_of(frame, KV_BUDGET)
    if budgets.empty:
        return None
    budgets = budgets.assign(policy=budgets["policy"] + " @ " + budgets["budget"].astype(str))
    return plots.line_plot(budgets, "layer", "KV budget per layer", group="policy", value_label="kept tokens")


def pruning_curves(frame: pd.DataFrame) -> go.Figure | None:
    """Held-out loss after removing k layers, by Block Influence and by TAPPA (both start at the unpruned loss)."""
    prune = rows_of(frame, PRUNE_NLL)
    if prune.empty:
        return None
    base = prune[prune["method"] == "none"]
    curves = pd.concat([prune[prune["method"] != "none"], base.assign(method="bi"), base.assign(method="tappa")])
    return plots.line_plot(curves, "k", "Held-out loss after removing k layers", group="method",
                           x_label="layers removed", value_label="next-token loss (nats)")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """q-sim per layer, q-sim vs predictability per head, KV budgets and pruning curves."""
    drawn = (q_similarity_per_layer(frame), qsim_vs_predictability(frame), kv_budgets(frame), pruning_curves(frame))
    return [figure for figure in drawn if figure is not None]
