"""Tidy rows of the patterns analysis: one row per (head, query, key) of a recorded pattern."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from .metrics import visible_entries

ANALYSIS = "patterns"
METRIC = "attention"


def pattern_rows(pattern: Tensor, tokens: Sequence[str], causal: bool = True) -> pd.DataFrame:
    """Tidy rows of one example's pattern ``[heads, L, L]`` (real tokens only): ``head``, ``position``
    (query), ``key_position``, ``token`` (query text), ``key_token``, ``value``; for a causal model
    only keys at or before the query (the rest are exactly 0)."""
    heads, length, _ = pattern.shape
    if length != len(tokens):
        raise ValueError(f"pattern covers {length} positions but {len(tokens)} tokens were given")
    query, key, values = visible_entries(pattern, causal)
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
