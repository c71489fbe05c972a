"""What the report (and a notebook, in one call) shows for each analysis beyond the per-head heatmaps.

Each ``<analysis>_figures(frame)`` takes the analysis's rows of one run and returns its figures,
leaving out any whose rows the run does not have (no empty figure ever reaches the report).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots


def _metric(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["metric"] == name]


def sinks_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Sink rate by position, hidden-sink tokens, massive activations, ACT accuracy, StreamingLLM loss."""
    out = []
    rate = _metric(frame, "sink_rate")
    if not rate.empty:
        epsilon = rate["epsilon"].iloc[0] if "epsilon" in rate else None
        out.append(plots.position_profile(rate, f"Sink rate Sink_k (ε = {epsilon})", "% of heads"))
    tokens = _metric(frame, "hidden_sink_token")
    if not tokens.empty:
        out.append(plots.token_table(tokens, "Tokens that become hidden sinks"))
    if not _metric(frame, "massive_activation").empty:
        out.append(plots.massive_activation_profile(frame))
    accuracy = _metric(frame, "act_accuracy")
    if not accuracy.empty:
        out.append(plots.grouped_bars(accuracy, "split", "condition", "ACT: accuracy with and without calibration",
                                      "accuracy"))
    stream = _metric(frame, "streaming_token_nll")
    if not stream.empty:
        out.append(plots.rolling_lines(stream, "cache", "StreamingLLM: next-token loss (rolling mean)",
                                       value_label="nats"))
    return out


def retrieval_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Needle-in-a-haystack grids and the masking curves."""
    out = []
    for metric, title, label in (("niah_success", "NIAH success (ROUGE-1 recall > 0.5)", "NIAH success"),
                                 ("rouge1_recall", "ROUGE-1 recall of the answer", "recall")):
        if not _metric(frame, metric).empty:
            out.append(plots.niah_grid(_metric(frame, metric), title, label))
    for metric, title, label in (("masking_success_rate", "NIAH success with heads masked", "NIAH success"),
                                 ("masking_rouge1_recall", "ROUGE-1 recall with heads masked", "recall")):
        if not _metric(frame, metric).empty:
            out.append(plots.masking_curve(_metric(frame, metric), title, label))
    return out


def distance_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """WAAD, FAI and entropy along the longest response; peak coupling against random positions."""
    out = []
    lengths = _metric(frame, "response_length")
    if not lengths.empty:
        example = lengths.sort_values(["value", "example"], ascending=[False, True])["example"].iloc[0]
        rows = frame[frame["example"] == example]
        for metric, group, label in (("waad", None, "WAAD"), ("fai", "head_set", "FAI"),
                                     ("entropy", None, "entropy (nats)")):
            part = _metric(rows, metric)
            if not part.empty:
                out.append(plots.token_profile(part, f"{label} along {example}", group=group, value_label=label))
    coupling = frame[frame["metric"].str.startswith("coupling_")]
    if not coupling.empty:
        bars = pd.concat([coupling.assign(kind="peaks"),
                          coupling.assign(kind="random positions", value=coupling["baseline"])])
        out.append(plots.grouped_bars(bars, "metric", "kind", "Coupling at peaks vs random positions", "rate"))
    return out


def patterns_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """One attention explorer per example (a slider over every head)."""
    rows = _metric(frame, "attention")
    return [plots.attention_explorer(rows, str(example)) for example in rows["example"].drop_duplicates()]


def circuits_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Attribution vs activation patching, the edge circuit of each task, overlap vs its baseline."""
    out = []
    scores = frame[frame["metric"].isin(["act_patch_noising", "attr_patch"])]
    if set(scores["metric"]) == {"act_patch_noising", "attr_patch"}:
        out.append(plots.method_scatter(scores, "act_patch_noising", "attr_patch",
                                        "Attribution vs activation patching (per node)"))
    edge_metric = "eap_ig" if (frame["metric"] == "eap_ig").any() else "eap"
    edges = _metric(frame, edge_metric)
    for task in sorted(edges["task"].dropna().unique()):
        out.append(plots.circuit_graph(edges[edges["task"] == task], f"{edge_metric} circuit — {task}"))
    overlaps = frame[frame["metric"].isin(["overlap_a", "overlap_b", "jaccard"])]
    if "head_class" in overlaps:
        overlaps = overlaps[overlaps["head_class"].isna()]
    if not overlaps.empty:
        out.append(plots.overlap_bars(overlaps, "Circuit overlap vs permutation baseline"))
    return out


def attribution_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """Token heatmap of the first example, attention vs IG scatter, the correlation table, per-layer
    agreement, deletion curves and the grounding shares."""
    out = []
    if frame.empty:
        return out
    example = frame["example"].dropna().iloc[0]
    rows = frame[frame["example"] == example]
    tokens = pd.concat([_metric(rows, "attribution").assign(row=lambda f: f["method"]),
                        rows[(rows["metric"] == "attention") & rows["view"].isin(["all", "rollout"])]
                        .assign(row=lambda f: "attention " + f["view"])])
    if not tokens.empty:
        out.append(plots.token_heatmap(tokens, f"Attribution and attention on {example!r}", row="row"))
    prompt = frame[(frame["segment"] == "prompt") & (frame["position"] > 0)]
    attention = prompt[(prompt["metric"] == "attention") & (prompt["view"] == "all")]
    gradients = prompt[(prompt["metric"] == "attribution") & (prompt["method"] == "integrated_gradients")]
    if not attention.empty and not gradients.empty:
        columns = ["example", "position", "token", "value"]
        out.append(plots.attention_scatter(attention[columns], gradients[columns], "All-layer attention vs |IG|"))
    pearson = _metric(frame, "pearson")
    if not pearson.empty:
        out.append(plots.correlation_table(pearson, "Attention vs attribution (Pearson r)"))
        by_layer = pearson[pearson["view"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
        if not by_layer.empty:
            out.append(plots.grouped_bars(by_layer, "layer", "method", "Per-layer attention vs attribution",
                                          "mean Pearson r"))
    deletion = _metric(frame, "deletion")
    if not deletion.empty:
        out.append(plots.perturbation_curves(deletion, "Deletion curves (mean over examples)", "target"))
    shares = _metric(frame, "grounding_share")
    if not shares.empty:
        shares = shares[shares["cited"].fillna(False).astype(bool)]
        shares = shares[shares["view"].isin(["all", "rollout"]) | shares["method"].notna()]
        shares = shares.assign(source=shares["method"].fillna("attention " + shares["view"].fillna("")))
        bars = pd.concat([shares.groupby("source", as_index=False)["value"].mean().assign(kind="cited passage"),
                          shares.groupby("source", as_index=False)["length_share"].mean()
                          .rename(columns={"length_share": "value"}).assign(kind="length share (chance)")])
        out.append(plots.grouped_bars(bars, "source", "kind", "Share on the cited passage", "mean share"))
    return out


def speech_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """The correlation table per aggregation level (as in Papi et al. 2025), per-layer correlations, the word
    error rates and the spectrogram overlay of the first token of the first utterance with maps."""
    out = []
    pearson = _metric(frame, "xattn_saliency_pearson")
    if not pearson.empty:
        out.append(plots.correlation_table(pearson.assign(view=pearson["level"]),
                                           "Cross-attention vs log-mel saliency per aggregation level"))
        by_layer = pearson[pearson["level"] == "layer"].groupby(["layer", "method"], as_index=False)["value"].mean()
        out.append(plots.grouped_bars(by_layer, "layer", "method", "Per-layer cross-attention vs saliency",
                                      "mean Pearson r"))
    wer = _metric(frame, "wer")
    if not wer.empty:
        out.append(plots.grouped_bars(wer.assign(kind="WER"), "example", "kind", "Word error rate", "WER"))
    mel = _metric(frame, "log_mel")
    if not mel.empty:
        out.append(plots.spectrogram_overlay(frame, str(mel["example"].iloc[0]), 0))
    return out


def tappa_figures(frame: pd.DataFrame) -> list[go.Figure]:
    """q-sim per layer, q-sim vs predictability per head, KV budgets and pruning curves."""
    out = []
    layers = frame[frame["metric"].isin(["q_similarity", "q_similarity_prune"]) & frame["head"].isna()]
    if not layers.empty:
        out.append(plots.line_plot(layers, "layer", "q-similarity per layer", group="variant", value_label="q_sim"))
    heads = frame[(frame["metric"] == "q_similarity") & frame["head"].notna()]
    predictability = _metric(frame, "predictability")
    if not heads.empty and not predictability.empty:
        wide = heads.rename(columns={"value": "q_sim"})[["layer", "head", "q_sim"]].merge(
            predictability[["layer", "head", "value", "pattern_type"]].rename(columns={"value": "predictability"}),
            on=["layer", "head"])
        out.append(plots.head_scatter(wide, "q_sim", "predictability", "q-sim vs pattern predictability, per head",
                                      color="pattern_type"))
    budgets = _metric(frame, "kv_budget")
    if not budgets.empty:
        budgets = budgets.assign(policy=budgets["policy"] + " @ " + budgets["budget"].astype(str))
        out.append(plots.line_plot(budgets, "layer", "KV budget per layer", group="policy",
                                   value_label="kept tokens"))
    prune = _metric(frame, "prune_nll")
    if not prune.empty:
        base = prune[prune["method"] == "none"]
        curves = pd.concat([prune[prune["method"] != "none"], base.assign(method="bi"), base.assign(method="tappa")])
        out.append(plots.line_plot(curves, "k", "Held-out loss after removing k layers", group="method",
                                   x_label="layers removed", value_label="next-token loss (nats)"))
    return out
