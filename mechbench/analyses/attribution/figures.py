"""The attribution analysis's own figures for the report and notebooks (beyond the per-head heatmaps).

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.attribution.rows import ATTENTION, ATTRIBUTION, DELETION, GROUNDING_SHARE, PEARSON
from mechbench.plots import rows_of


def token_heatmap(frame: pd.DataFrame, example: str | None = None) -> go.Figure | None:
    """Every attribution method and the all-layer / rollout attention of one example, token by token
    (``example`` defaults to the first example of the frame)."""
    examples = frame["example"].dropna()
    if example is None:
        if examples.empty:
            return None
        example = examples.iloc[0]
    rows = frame[frame["example"] == example]
    tokens = pd.concat([rows_of(rows, ATTRIBUTION).assign(row=lambda f: f["method"]),
                        rows[(rows["metric"] == ATTENTION) & rows["view"].isin(["all", "rollout"])]
                        .assign(row=lambda f: "attention " + f["view"])])
    if tokens.empty:
        return None
    return plots.token_heatmap(tokens, f"Attribution and attention on {example!r}", row="row")


def attention_vs_ig(frame: pd.DataFrame) -> go.Figure | None:
    """All-layer attention against |integrated gradients| per prompt token (position 0, the sink, left out)."""
    prompt = frame[(frame["segment"] == "prompt") & (frame["position"] > 0)]
    attention = prompt[(prompt["metric"] == ATTENTION) & (prompt["view"] == "all")]
    gradients = prompt[(prompt["metric"] == ATTRIBUTION) & (prompt["method"] == "integrated_gradients")]
    if attention.empty or gradients.empty:
        return None
    columns = ["example", "position", "token", "value"]
    return plots.attention_scatter(attention[columns], gradients[columns], "All-layer attention vs |IG|")


def correlation_table(frame: pd.DataFrame) -> go.Figure | None:
    """Pearson r of attention vs attribution, mean ± sd over examples, per view (aggregation level) and method."""
    pearson = rows_of(frame, PEARSON)
    if pearson.empty:
        return None
    return plots.correlation_table(pearson, "Attention vs attribution (Pearson r)")


def per_layer_correlation(frame: pd.DataFrame) -> go.Figure | None:
    """Mean Pearson r of each layer's attention vs attribution, one bar per method."""
    pearson = rows_of(frame, PEARSON)
    by_layer = pearson[pearson["view"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
    if by_layer.empty:
        return None
    return plots.grouped_bars(by_layer, "layer", "method", "Per-layer attention vs attribution", "mean Pearson r")


def deletion_curves(frame: pd.DataFrame) -> go.Figure | None:
    """Target value as prompt tokens are deleted in each ranking's order (mean over examples)."""
    deletion = rows_of(frame, DELETION)
    if deletion.empty:
        return None
    return plots.perturbation_curves(deletion, "Deletion curves (mean over examples)", "target")


def cited_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ``source`` (attention view or attribution method): the mean share on the cited passage and the
    passage's share of the passage tokens (chance), one ``kind`` each (empty without ``grounding_share`` rows)."""
    shares = rows_of(frame, GROUNDING_SHARE)
    if shares.empty:
        return pd.DataFrame(columns=["source", "value", "kind"])
    shares = shares[shares["cited"].fillna(False).astype(bool)]
    shares = shares[shares["view"].isin(["all", "rollout"]) | shares["method"].notna()]
    shares = shares.assign(source=shares["method"].fillna("attention " + shares["view"].fillna("")))
    return pd.concat([shares.groupby("source", as_index=False)["value"].mean().assign(kind="cited passage"),
                      shares.groupby("source", as_index=False)["length_share"].mean()
                      .rename(columns={"length_share": "value"}).assign(kind="length share (chance)")])


def grounding_shares(frame: pd.DataFrame) -> go.Figure | None:
    """Share of attention / attribution / occlusion on the cited passage against chance (:func:`cited_shares`)."""
    if rows_of(frame, GROUNDING_SHARE).empty:
        return None
    return plots.grouped_bars(cited_shares(frame), "source", "kind", "Share on the cited passage", "mean share")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Token heatmap of the first example, attention vs IG scatter, the correlation table, per-layer
    agreement, deletion curves and the grounding shares."""
    if frame.empty:
        return []
    drawn = (token_heatmap(frame), attention_vs_ig(frame), correlation_table(frame), per_layer_correlation(frame),
             deletion_curves(frame), grounding_shares(frame))
    return [figure for figure in drawn if figure is not None]
