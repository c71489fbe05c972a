"""Rank statistics shared by the analyses: ranks, Pearson and Spearman correlation, top-k overlap.

Tensors in, tensors out, along the last axis (broadcasting the rest), so one call correlates every
head's map with its attribution at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rankdata(values: Tensor) -> Tensor:
    """Ranks (1-based) along the last axis, ties get their average rank (``scipy.stats.rankdata``'s default).

    By sorting (``O(n log n)``): a value's rank is the count of smaller values plus the mean of its tied
    ranks, so flattened spectrogram-sized maps (thousands of cells) rank quickly.
    """
    values = values.contiguous()
    ordered = values.sort(-1).values
    below = torch.searchsorted(ordered, values, right=False)
    through = torch.searchsorted(ordered, values, right=True)
    return below.double() + (through - below + 1).double() / 2


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation along the last axis (broadcasting the rest); NaN when either side is constant."""
    x, y = torch.broadcast_tensors(x.double(), y.double())
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    denominator = (x.pow(2).sum(-1) * y.pow(2).sum(-1)).sqrt()
    return torch.where(denominator > 0, (x * y).sum(-1) / denominator.clamp(min=1e-300), float("nan"))


def spearman(x: Tensor, y: Tensor) -> Tensor:
    """Spearman rank correlation along the last axis: Pearson of the average ranks."""
    x, y = torch.broadcast_tensors(x, y)
    return pearson(rankdata(x), rankdata(y))


def topk_overlap(x: Tensor, y: Tensor, k: int) -> Tensor:
    """``|top_k(x) ∩ top_k(y)| / k`` along the last axis (``k`` capped at its length; ties broken by position)."""
    x, y = torch.broadcast_tensors(x, y)
    k = min(k, x.shape[-1])
    top_x = torch.zeros_like(x, dtype=torch.bool).scatter(-1, x.topk(k, dim=-1).indices, True)
    top_y = torch.zeros_like(y, dtype=torch.bool).scatter(-1, y.topk(k, dim=-1).indices, True)
    return (top_x & top_y).sum(-1).double() / k


def ranked_heads(scores: Tensor) -> list[tuple[int, int]]:
    """All ``(layer, head)`` by descending retrieval score; NaN last, ties in layer-then-head order."""
    flat = torch.nan_to_num(scores.double().flatten(), nan=float("-inf"))
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()
    return [divmod(index, scores.shape[1]) for index in order]


def paired_spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman correlation of two flat series after dropping every pair with a NaN; NaN when fewer than
    3 pairs remain or a side is constant."""
    x, y = torch.as_tensor(x, dtype=torch.float64).flatten(), torch.as_tensor(y, dtype=torch.float64).flatten()
    keep = ~(x.isnan() | y.isnan())
    if int(keep.sum()) < 3:
        return float("nan")
    return float(spearman(x[keep], y[keep]))
