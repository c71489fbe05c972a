"""Tidy rows of the sinks analysis, built from computed scores and reducers, and its metric names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mechbench.core.tidy import ExtraColumns, to_tidy

from .metrics import sink_rate
from .reducers import MassiveActivationReducer

ANALYSIS = "sinks"

# metric names (the tidy ``metric`` column)
SINK_SCORE = "sink_score"
SINK_SCORE_MEAN = "sink_score_mean"
SINK_RATE = "sink_rate"
HIDDEN_SINK = "hidden_sink"
HIDDEN_SINK_COUNT = "hidden_sink_count"
HIDDEN_SINK_TOKEN = "hidden_sink_token"
MASSIVE_ACTIVATION = "massive_activation"
RESID_ABS_MEDIAN = "resid_abs_median"
ACT_SEARCH_DELTA = "act_search_delta"
ACT_ACCURACY = "act_accuracy"
ACT_TEXT_NLL = "act_text_nll"
STREAMING_NLL = "streaming_nll"
STREAMING_TOKEN_NLL = "streaming_token_nll"


@dataclass(frozen=True)
class MassiveCriteria:
    """Sun et al.'s working definition: magnitude above ``min_value`` and ``min_ratio`` x the median."""

    top_k: int = 3
    min_value: float = 100.0
    min_ratio: float = 1000.0


def _score_rows(scores: Tensor, ids: list[str], token_texts: list[list[str]], epsilon: float) -> list[pd.DataFrame]:
    """Rows ``sink_score`` (with ``token``), ``sink_score_mean`` (with ``n_examples``) and ``sink_rate``."""
    per_example = to_tidy(scores, ("example", "layer", "head", "position"), coords={"example": ids},
                          metric=SINK_SCORE)
    tokens = {(ex, pos): tok for ex, toks in zip(ids, token_texts, strict=True) for pos, tok in enumerate(toks)}
    per_example["token"] = [tokens[(ex, pos)] for ex, pos in zip(per_example["example"], per_example["position"],
                                                                   strict=True)]
    mean = to_tidy(scores.nanmean(0), ("layer", "head", "position"), metric=SINK_SCORE_MEAN)
    examples_per_position = (~torch.isnan(scores[:, 0, 0, :])).sum(0).numpy()
    mean["n_examples"] = examples_per_position[mean["position"].to_numpy()]
    rate = to_tidy(sink_rate(scores, epsilon), ("position",), metric=SINK_RATE, epsilon=epsilon)
    return [per_example, mean, rate]


def _hidden_sink_rows(scores: Tensor, mask: Tensor, ids: list[str], token_texts: list[list[str]]) -> pd.DataFrame:
    """Rows ``hidden_sink`` (each detection), ``hidden_sink_count`` (per head) and ``hidden_sink_token``."""
    found = mask.nonzero().tolist()
    detections = pd.DataFrame({
        "example": [ids[e] for e, _, _, _ in found], "layer": [la for _, la, _, _ in found],
        "head": [h for _, _, h, _ in found], "position": [p for _, _, _, p in found],
        "value": [float(scores[e, la, h, p]) for e, la, h, p in found],
        "token": [token_texts[e][p] for e, _, _, p in found]})
    detections["metric"] = HIDDEN_SINK
    per_head = to_tidy(mask.double().sum(-1).mean(0), ("layer", "head"), metric=HIDDEN_SINK_COUNT)
    if detections.empty:
        return pd.concat([detections, per_head], ignore_index=True)
    by_token = detections.assign(layer_head=list(zip(detections["layer"], detections["head"], strict=True))).groupby(
        "token", sort=False).agg(value=("value", "size"), n_examples=("example", "nunique"),
                                 n_heads=("layer_head", "nunique"))
    by_token = by_token.reset_index().sort_values(["value", "token"], ascending=[False, True])
    by_token["metric"] = HIDDEN_SINK_TOKEN
    by_token["value"] = by_token["value"].astype(float)
    return pd.concat([detections, per_head, by_token], ignore_index=True)


def _massive_rows(reducer: MassiveActivationReducer, criteria: MassiveCriteria, sink_heads: Tensor,
                  ids: list[str], token_texts: list[list[str]]) -> pd.DataFrame:
    """Rows ``massive_activation`` (top-k per example and layer) and ``resid_abs_median``."""
    top = to_tidy(reducer.values, ("example_index", "layer", "rank"), metric=MASSIVE_ACTIVATION)
    top["example"] = [ids[i] for i in top["example_index"]]
    index = tuple(torch.tensor(top[axis].to_numpy(dtype="int64")) for axis in ("example_index", "layer", "rank"))
    positions = reducer.positions[index]
    top["position"] = positions.numpy()
    top["channel"] = reducer.channels[index].numpy()
    median = reducer.medians[index[:2]].numpy()
    value = top["value"].to_numpy()
    # a zero median (e.g. one-hot residuals) makes every nonzero entry infinitely many times the median
    top["ratio"] = np.divide(value, median, out=np.where(value > 0, np.inf, np.nan), where=median > 0)
    top["is_massive"] = (top["value"] > criteria.min_value) & (top["ratio"] >= criteria.min_ratio)
    top["token"] = [token_texts[e][p] for e, p in zip(index[0].tolist(), positions.tolist(), strict=True)]
    top["n_sink_heads"] = sink_heads[index[0], positions].numpy()
    top = top.drop(columns="example_index")
    medians = to_tidy(reducer.medians, ("example", "layer"), coords={"example": ids}, metric=RESID_ABS_MEDIAN)
    return pd.concat([top, medians], ignore_index=True)


#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=("n_examples", "n_tokens", "n_heads", "n_sink_heads", "rank", "channel"),
                       booleans=("is_massive", "selected"))
