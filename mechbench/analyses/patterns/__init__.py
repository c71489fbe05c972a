"""Whole attention patterns of a few short prompts: the data behind the attention explorer.

Every other analysis reduces attention inside the hook; this one keeps ``A[l, h, q, k]`` itself,
for the handful of short inputs a person can read token by token (the explorer in the report and
in notebooks, :func:`mechbench.plots.attention_explorer`). Rows grow as
``layers x heads x L^2 / 2`` per prompt (causal), so ``max_tokens`` is capped at 128.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from pydantic import Field
from torch import Tensor

from mechbench.analyses import AnalysisSpec
from mechbench.config import StrictModel
from mechbench.core.dataset import Batch
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_layers
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError
from mechbench.tasks.texts import BUILTIN, load_texts

ANALYSIS = "patterns"
METRIC = "attention"


def pattern_rows(pattern: Tensor, tokens: Sequence[str], causal: bool = True) -> pd.DataFrame:
    """Tidy rows of one example's pattern ``[heads, L, L]`` (real tokens only): ``head``, ``position``
    (query), ``key_position``, ``token`` (query text), ``key_token``, ``value``; for a causal model
    only keys at or before the query (the rest are exactly 0)."""
    heads, length, _ = pattern.shape
    if length != len(tokens):
        raise ValueError(f"pattern covers {length} positions but {len(tokens)} tokens were given")
    keep = torch.ones(length, length, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    query, key = keep.nonzero(as_tuple=True)
    values = pattern[:, query, key].double().cpu()
    n = query.numel()
    token_array = pd.Series(list(tokens), dtype=object)
    return pd.DataFrame({
        "head": torch.arange(heads).repeat_interleave(n).numpy(),
        "position": query.repeat(heads).numpy(),
        "key_position": key.repeat(heads).numpy(),
        "token": token_array.iloc[query.repeat(heads).numpy()].to_numpy(),
        "key_token": token_array.iloc[key.repeat(heads).numpy()].to_numpy(),
        "value": values.reshape(-1).numpy(),
    })


def run_patterns(model: HookedModel, texts: Sequence[str], *, example_ids: Sequence[str] | None = None,
                 max_tokens: int = 32, layers: Sequence[int] | None = None, prepend_bos: bool | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Record ``hook_pattern`` for every requested layer of each text (one text per forward pass, so
    no padding enters a pattern) and return its rows with ``layer`` and ``example`` filled in."""
    dataset = model.tokenize_dataset(texts, max_tokens=max_tokens, prepend_bos=prepend_bos, example_ids=example_ids)
    parts: list[pd.DataFrame] = []

    def keep(layer: int, pattern: Tensor, batch: Batch) -> None:
        index = int(batch.indices[0])
        n = int(batch.lengths[0])
        rows = pattern_rows(pattern[0, :, :n, :n], dataset.token_texts[index], model.causal)
        rows.insert(0, "layer", layer)
        rows.insert(2, "example", dataset.example_ids[index])
        parts.append(rows)

    Recorder(model, batch_size=1, progress=progress).run(dataset, {"pattern": keep}, layers,
                                                         description="attention patterns")
    frame = pd.concat(parts, ignore_index=True)
    frame["metric"] = METRIC
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame.sort_values(["example", "layer", "head", "position", "key_position"], kind="stable",
                             ignore_index=True)


class PatternsConfig(StrictModel):
    """Options of the ``patterns`` analysis (config block ``analyses.patterns``)."""

    texts: str = Field(BUILTIN, description="'builtin', or a .jsonl / .txt file of texts")
    limit: int = Field(2, ge=1, le=16, description="keep the patterns of the first N texts")
    max_tokens: int = Field(32, ge=2, le=128, description="truncate each text to N tokens (rows grow as N^2)")
    layers: list[int] | None = Field(None, description="layers to keep (default: all)")
    prepend_bos: bool | None = Field(None, description="None = the tokenizer's setting; True/False force it")


def check_config(config: PatternsConfig) -> None:
    """Fail before any model is loaded when the text set is missing or empty, or a layer is negative."""
    load_texts(config.texts, config.limit)
    if config.layers is not None and any(layer < 0 for layer in config.layers):
        raise ConfigError(f"patterns.layers {config.layers} has a negative layer; give layer indices from 0")


def run_patterns_from_config(model: HookedModel, config: PatternsConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI."""
    if config.layers is not None:
        check_layers("patterns.layers", config.layers, config.layers, model.n_layers, model.name)
    ids, texts = load_texts(config.texts, config.limit)
    return run_patterns(model, texts, example_ids=ids, max_tokens=config.max_tokens, layers=config.layers,
                        prepend_bos=config.prepend_bos, progress=progress)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="whole attention patterns of a few short prompts, for the attention explorer",
    citation="attention weights softmax(QK^T/sqrt(d)) as recorded at hook_pattern",
    config_model=PatternsConfig,
    run=run_patterns_from_config,
    headline_metrics=(),
    check=check_config,
    figures="mechbench.analyses.patterns.figures",
    text_sharded=True,
    context_length_options=lambda length: {"max_tokens": length},
)
