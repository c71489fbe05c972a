"""The pattern entries the patterns analysis keeps: tensors in, tensors out."""

from __future__ import annotations

import torch
from torch import Tensor


def visible_entries(pattern: Tensor, causal: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """``(query, key, values)`` of one example's pattern ``[heads, L, L]``: the query and key positions
    ``[n]`` (query-major) and their weights ``[heads, n]`` (float64, on the CPU); for a causal model only
    keys at or before the query (the rest are exactly 0)."""
    length = pattern.shape[-2]
    keep = torch.ones(length, length, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    query, key = keep.nonzero(as_tuple=True)
    return query, key, pattern[:, query, key].double().cpu()
