"""Tidy rows of the attribution analysis, built from the computed scores and attention views, and its metric names."""

from __future__ import annotations

from typing import Final

import pandas as pd
import torch
from torch import Tensor

from mechbench.analyses.attribution.config import GRADIENT_METHODS, AttributionConfig
from mechbench.analyses.attribution.metrics import Example, curve_area, feature_positions, grounding_shares
from mechbench.analyses.attribution.reducers import AttentionViews
from mechbench.core.tidy import ExtraColumns, to_tidy
from mechbench.stats import pearson, spearman, topk_overlap

ANALYSIS = "attribution"
#: metric names (the tidy ``metric`` column); the curves also write ``f"{mode}_auc"`` (``deletion_auc``, ...)
ATTRIBUTION = "attribution"
ATTENTION = "attention"
TARGET_VALUE = "target_value"
IG_COMPLETENESS_ERROR = "ig_completeness_error"
IG_RELATIVE_ERROR = "ig_relative_error"
PEARSON = "pearson"
SPEARMAN = "spearman"
TOPK_OVERLAP = "topk_overlap"
DELETION: Final = "deletion"
INSERTION: Final = "insertion"
GROUNDING_SHARE = "grounding_share"

INT_COLUMNS = ("layer", "head", "position", "step", "passage", "n_positions", "n_random", "n_passages",
               "prompt_length")
#: The analysis's own columns and their dtypes; every run writes them all, whatever its methods and views.
COLUMNS = ExtraColumns(ints=(*INT_COLUMNS, "ig_points"), booleans=("cited", "ig_converged"),
                       always=(*INT_COLUMNS, "method", "view", "ranking", "token", "segment", "target"))


def _view_items(views: AttentionViews) -> list[tuple[str, int | None, int | None, Tensor]]:
    """``(view, layer, head, map [T])`` for every attention view of an example."""
    n_layers, n_heads = views.head.shape[:2]
    items: list[tuple[str, int | None, int | None, Tensor]] = [
        ("head", layer, head, views.head[layer, head]) for layer in range(n_layers) for head in range(n_heads)]
    items += [("layer", layer, None, views.layer[layer]) for layer in range(n_layers)]
    items += [("all", None, None, views.all)]
    items += [("rollout", layer, None, views.rollout[layer]) for layer in range(n_layers)]
    return items


def _agreement_rows(example: Example, scores: dict[str, Tensor], views: AttentionViews,
                    config: AttributionConfig) -> pd.DataFrame:
    positions = feature_positions(example, config.exclude_first)
    items = [item for item in _view_items(views) if item[0] in config.views]
    if len(positions) < 2 or not items or not scores:
        return pd.DataFrame()
    maps = torch.stack([item[3][positions] for item in items])  # [V, n]
    frames = []
    for method, values in scores.items():
        score = values[positions]
        score = score.abs() if config.absolute else score
        stats = {PEARSON: pearson(maps, score), SPEARMAN: spearman(maps, score),
                 TOPK_OVERLAP: topk_overlap(maps, score, config.top_k)}
        for metric, value in stats.items():
            frames.append(pd.DataFrame({"view": [i[0] for i in items], "layer": [i[1] for i in items],
                                        "head": [i[2] for i in items], "value": value.numpy(), "metric": metric,
                                        "method": method, "n_positions": len(positions)}))
    return pd.concat(frames, ignore_index=True)


def _curve_frame(curves: dict[tuple[str, str], tuple[Tensor, Tensor]], values: Tensor, config: AttributionConfig,
                 n_positions: int) -> pd.DataFrame:
    """Rows of the deletion / insertion ``curves`` (``(ranking, mode) -> (fractions, masks)``) from the target
    ``values`` of all their masks in order; the ``random{i}`` orders are averaged into one ``random`` curve."""
    frames: list[pd.DataFrame] = []
    start = 0
    random: dict[str, list[Tensor]] = {}
    for (name, mode), (fractions, masks) in curves.items():
        curve, start = values[start:start + len(masks)], start + len(masks)
        if name.startswith("random"):
            random.setdefault(mode, []).append(curve)
            if len(random[mode]) < config.n_random:
                continue
            name, curve = "random", torch.stack(random[mode]).mean(0)
        frames.append(pd.DataFrame({"metric": mode, "ranking": name, "fraction": fractions.numpy(),
                                    "step": range(len(fractions)), "value": curve.numpy()}))
        frames.append(pd.DataFrame({"metric": [f"{mode}_auc"], "ranking": [name],
                                    "value": [curve_area(fractions, curve)]}))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_random"] = config.n_random
    frame["n_positions"] = n_positions
    return frame


def _grounding_frame(example: Example, scores: dict[str, Tensor], views: AttentionViews,
                     effects: Tensor | None) -> pd.DataFrame:
    """Grounding-share rows of an example with passages; ``effects``: the passage occlusion effects, if any."""
    passages = example.passages
    sources: list[tuple[str | None, str | None, int | None, Tensor]] = []
    sources += [(method, None, None, values.abs()) for method, values in scores.items() if method in GRADIENT_METHODS]
    sources += [(None, "layer", layer, views.layer[layer]) for layer in range(views.layer.shape[0])]
    sources += [(None, "all", None, views.all), (None, "rollout", None, views.rollout[-1])]
    lengths = torch.tensor([float(e - s) for s, e in passages])
    rows: list[tuple[str | None, str | None, int | None, Tensor, Tensor]] = [
        (method, view, layer, grounding_shares(values.double(), passages),
         torch.stack([values[s:e].double().sum() for s, e in passages])) for method, view, layer, values in sources]
    if effects is not None:
        positive = effects.clamp(min=0)
        share = positive / positive.sum() if positive.sum() > 0 else torch.full_like(positive, float("nan"))
        rows.append(("occlusion", None, None, share, effects))
    frames = []
    for method, view, layer, share, mass in rows:
        frames.append(pd.DataFrame({"metric": GROUNDING_SHARE, "method": method, "view": view, "layer": layer,
                                    "passage": range(len(passages)), "value": share.numpy(),
                                    "mass": mass.numpy(), "length_share": (lengths / lengths.sum()).numpy(),
                                    "cited": [i == example.cited for i in range(len(passages))]}))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_passages"] = len(passages)
    return frame


def _token_rows(example: Example, scores: dict[str, Tensor], views: AttentionViews, config: AttributionConfig,
                extras: dict[str, float]) -> pd.DataFrame:
    n = example.tokens.numel()
    segment = ["prompt" if p < example.prompt_length else "target" for p in range(n)]
    frames = [pd.DataFrame({"metric": ATTRIBUTION, "method": method, "position": range(n),
                            "token": example.token_texts, "segment": segment, "value": values[:n].numpy()})
              for method, values in scores.items()]
    for view, values in (("all", views.all), ("rollout", views.rollout[-1])):
        frames.append(pd.DataFrame({"metric": ATTENTION, "view": view, "position": range(n),
                                    "token": example.token_texts, "segment": segment, "value": values.numpy()}))
    for layer in range(views.layer.shape[0]):
        frames.append(pd.DataFrame({"metric": ATTENTION, "view": "layer", "layer": layer, "position": range(n),
                                    "token": example.token_texts, "segment": segment,
                                    "value": views.layer[layer].numpy()}))
    if config.store_head_maps:
        heads = to_tidy(views.head, ("layer", "head", "position"), metric=ATTENTION, view="head")
        heads["token"] = [example.token_texts[p] for p in heads["position"]]
        heads["segment"] = [segment[p] for p in heads["position"]]
        frames.append(heads)
    frames.append(pd.DataFrame({"metric": [TARGET_VALUE], "value": [extras[TARGET_VALUE]],
                                "target": [example.target_text if example.target_text is not None else
                                           "".join(example.token_texts[p] for p in example.target.positions)],
                                "prompt_length": [example.prompt_length]}))
    if "ig_delta" in extras:
        gap = extras[TARGET_VALUE] - extras["ig_baseline_value"]
        frames.append(pd.DataFrame({"metric": [IG_COMPLETENESS_ERROR, IG_RELATIVE_ERROR],
                                    "value": [abs(extras["ig_delta"]), abs(extras["ig_delta"]) / max(abs(gap), 1e-12)],
                                    "f_input": extras[TARGET_VALUE], "f_baseline": extras["ig_baseline_value"],
                                    "ig_points": int(extras["ig_points"]), "method": "integrated_gradients",
                                    "ig_converged": bool(extras["ig_converged"]) if "ig_converged" in extras
                                    else None}))
    return pd.concat(frames, ignore_index=True)
