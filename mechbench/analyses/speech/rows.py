"""Tidy rows of the speech analysis, and its metric names."""

from __future__ import annotations

import pandas as pd
from torch import Tensor

from mechbench.analyses.speech.metrics import (
    cross_attention_levels,
    map_correlations,
    normalize_words,
    word_error_rate,
)
from mechbench.core.pooling import pool_to_length
from mechbench.core.speech import SpeechModel
from mechbench.core.tidy import ExtraColumns, to_tidy

ANALYSIS = "speech"
WER = "wer"
XATTN_SALIENCY_PREFIX = "xattn_saliency_"
XATTN_SALIENCY_PEARSON = "xattn_saliency_pearson"
LOG_MEL = "log_mel"
CROSS_ATTENTION = "cross_attention"
SALIENCY_PREFIX = "saliency_"
INT_COLUMNS = ("layer", "head", "position", "frame", "mel", "n_frames", "n_tokens", "n_reference_words")
#: The analysis's own columns and their dtypes; every run writes them all, whatever its options.
COLUMNS = ExtraColumns(ints=INT_COLUMNS, always=(*INT_COLUMNS, "level", "method", "token"))


def wer_rows(reference: str, transcript: str) -> pd.DataFrame:
    """The ``wer`` row of one utterance, with its ``transcript``, ``reference`` and ``n_reference_words``."""
    return pd.DataFrame({"metric": [WER], "value": [word_error_rate(reference, transcript)],
                         "transcript": [transcript], "reference": [reference],
                         "n_reference_words": [len(normalize_words(reference))]})


def _levels(attention: Tensor, saliency: Tensor) -> pd.DataFrame:
    """Correlation rows of every aggregation level against one pooled saliency map ``[I, T']``."""
    levels = cross_attention_levels(attention)
    frames = []
    for level, axes in (("head", ("layer", "head")), ("layer", ("layer",)), ("all", ())):
        for name, values in map_correlations(levels[level], saliency).items():
            metric = XATTN_SALIENCY_PREFIX + name
            frames.append(to_tidy(values, (*axes, "position") if name.endswith("token") else axes,
                                  drop_nan=False, metric=metric, level=level))
    return pd.concat(frames, ignore_index=True)


def correlation_rows(attention: Tensor, saliency: dict[str, Tensor], tokens: list[str]) -> list[pd.DataFrame]:
    """Correlation rows (:func:`_levels`) per saliency method, with ``method`` and the ``token`` of per-token rows."""
    frames = []
    for method, values in saliency.items():
        rows = _levels(attention, values).assign(method=method)
        rows["token"] = [tokens[int(p)] if pd.notna(p) else None for p in rows.get("position", [None] * len(rows))]
        frames.append(rows)
    return frames


def _map_rows(model: SpeechModel, features: Tensor, attention: Tensor, saliency: dict[str, Tensor],
              n_frames: int, tokens: list[str]) -> pd.DataFrame:
    """Log-mel (averaged to the encoder frame rate), all-layer cross-attention and pooled saliency maps."""
    mel = pool_to_length(features[:, :2 * n_frames].double().cpu(), n_frames, "mean")
    frames = [to_tidy(mel, ("mel", "frame"), metric=LOG_MEL)]
    maps = {CROSS_ATTENTION: cross_attention_levels(attention)["all"]} | {
        f"{SALIENCY_PREFIX}{method}": values for method, values in saliency.items()}
    for metric, values in maps.items():
        rows = to_tidy(values, ("position", "frame"), metric=metric, level="all" if metric == CROSS_ATTENTION
                       else None, method=None if metric == CROSS_ATTENTION else metric.removeprefix(SALIENCY_PREFIX))
        rows["token"] = [tokens[p] for p in rows["position"]]
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
