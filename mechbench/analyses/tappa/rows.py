"""TAPPA's tidy rows: the metric names and the frames built from the reducers' numbers."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechbench.analyses.tappa.config import TappaConfig
from mechbench.analyses.tappa.metrics import (
    PATTERN_TYPES,
    PatternCriteria,
    band_slices,
    classify_patterns,
    predictability,
    rope_frequencies,
)
from mechbench.core.tidy import ExtraColumns, to_tidy
from mechbench.stats import paired_spearman

ANALYSIS = "tappa"

# metric names (the tidy ``metric`` column); the pattern scores are ``pattern_<name>`` (:func:`pattern_rows`)
Q_SIMILARITY = "q_similarity"
Q_SIMILARITY_PRUNE = "q_similarity_prune"
BLOCK_INFLUENCE = "block_influence"
PATTERN_PERIOD = "pattern_period"
PREDICTABILITY = "predictability"
QSIM_SPEARMAN = "qsim_spearman"
ROPE_BAND_ADVANTAGE = "rope_band_advantage"
ROPE_BAND_SHARE = "rope_band_share"
KV_BUDGET = "kv_budget"
KV_EVICTION_NLL = "kv_eviction_nll"
PRUNE_SCORE = "prune_score"
PRUNE_NLL = "prune_nll"

#: The pattern scores that are shares of attention (``period`` is a lag)
SHARE_SCORES = (*PATTERN_TYPES, "diffuse")
#: Count columns, cast to nullable ``Int64`` in the final frame
INT_COLUMNS = ("layer", "head", "band", "window", "stride", "n_windows", "n_heads", "n_tokens", "n_examples",
               "budget", "k", "rank")
#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=INT_COLUMNS)


def qsim_rows(kv_head: Tensor, prune_head: Tensor, prune_layer: Tensor, bi: Tensor, config: TappaConfig,
              n_windows: int) -> list[pd.DataFrame]:
    """``q_similarity`` (kv variant) and ``q_similarity_prune`` per (layer, head) and per layer (mean over
    heads), then ``block_influence`` per layer. ``*_head``: ``[layer, head]``; ``prune_layer``, ``bi``: ``[layer]``."""
    prune: dict[str, Any] = dict(variant="prune", window=config.prune_window, stride=config.prune_stride,
                                 n_windows=n_windows)
    return [to_tidy(kv_head, ("layer", "head"), metric=Q_SIMILARITY, variant="kv", window=config.kv_window),
            to_tidy(kv_head.mean(-1), ("layer",), metric=Q_SIMILARITY, variant="kv", window=config.kv_window),
            to_tidy(prune_head, ("layer", "head"), metric=Q_SIMILARITY_PRUNE, **prune),
            to_tidy(prune_layer, ("layer",), metric=Q_SIMILARITY_PRUNE, **prune),
            to_tidy(bi, ("layer",), metric=BLOCK_INFLUENCE, n_windows=n_windows)]


def pattern_rows(scores: dict[str, Tensor], criteria: PatternCriteria, qsims: dict[str, Tensor]) -> list[pd.DataFrame]:
    """Pattern scores per (layer, head), mean over examples (``pattern_period``: the median), ``predictability``
    with its ``pattern_type`` label, and ``qsim_spearman``: each ``qsims`` variant ``[layer, head]`` against
    predictability and each share score, over heads. ``scores``: ``{name: [example, layer, head]}``."""
    mean_scores = {name: values.nanmean(0) for name, values in scores.items()}
    parts = [to_tidy(mean_scores[name], ("layer", "head"), metric=f"pattern_{name}") for name in SHARE_SCORES]
    parts.append(to_tidy(scores["period"].nanmedian(0).values, ("layer", "head"), metric=PATTERN_PERIOD))
    predict = predictability(mean_scores)
    rows = to_tidy(predict, ("layer", "head"), drop_nan=False, metric=PREDICTABILITY)
    rows["pattern_type"] = classify_patterns(mean_scores, criteria)
    parts.append(rows[rows["value"].notna()])

    correlations = []
    targets = {PREDICTABILITY: predict, **{name: mean_scores[name] for name in SHARE_SCORES}}
    for variant, qsim in qsims.items():
        for target, values in targets.items():
            correlations.append({"metric": QSIM_SPEARMAN, "variant": variant, "target": target,
                                 "value": paired_spearman(qsim, values),
                                 "n_heads": int((~torch.isnan(qsim.flatten() + values.flatten())).sum())})
    parts.append(pd.DataFrame(correlations))
    return parts


def band_rows(bands: Tensor, n_bands: int, rotary_dim: int, base: float) -> list[pd.DataFrame]:
    """``rope_band_advantage`` and ``rope_band_share`` per (layer, head, band), mean over examples, with each
    band's highest and lowest angular frequency (``freq_hi``, ``freq_lo``). ``bands``: ``[example, layer, head,
    band]``."""
    advantage = bands.nanmean(0)  # [layer, head, band]
    share = advantage / advantage.abs().sum(-1, keepdim=True).clamp_min(1e-12)
    theta = rope_frequencies(rotary_dim, base)
    slices = band_slices(rotary_dim // 2, n_bands)
    coords = {"band": list(range(n_bands))}
    parts = []
    for metric, values in ((ROPE_BAND_ADVANTAGE, advantage), (ROPE_BAND_SHARE, share)):
        frame = to_tidy(values, ("layer", "head", "band"), coords=coords, metric=metric)
        frame["freq_hi"] = [float(theta[slices[b][0]]) for b in frame["band"]]
        frame["freq_lo"] = [float(theta[slices[b][-1]]) for b in frame["band"]]
        parts.append(frame)
    return parts


