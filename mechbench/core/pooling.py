"""Pooling of a map's last axis into segments or to a coarser length (spectrogram frames to encoder
frames, tokens to words)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def pool_segments(values: Tensor, segments: Tensor, how: Literal["max", "mean", "sum"] = "max") -> Tensor:
    """Pool the last axis into segments: ``segments[i]`` is position ``i``'s segment (``-1`` = left out).
    Returns ``[..., n_segments]`` (``n_segments = segments.max() + 1``; an empty segment is NaN)."""
    n_segments = int(segments.max()) + 1
    out = []
    for segment in range(n_segments):
        chosen = values[..., segments == segment]
        if chosen.shape[-1] == 0:
            out.append(torch.full(values.shape[:-1], float("nan"), dtype=values.dtype))
        else:
            out.append({"max": chosen.amax(-1), "mean": chosen.mean(-1), "sum": chosen.sum(-1)}[how])
    return torch.stack(out, -1)


def pool_to_length(values: Tensor, length: int, how: Literal["max", "mean"] = "max") -> Tensor:
    """Pool the last axis to ``length`` bins (adaptive max or average pooling, as PyTorch's
    ``adaptive_*_pool1d``): bring a finer map (e.g. spectrogram frames) to a coarser resolution."""
    pool = torch.nn.functional.adaptive_max_pool1d if how == "max" else torch.nn.functional.adaptive_avg_pool1d
    flat = values.reshape(-1, 1, values.shape[-1]).double()
    return pool(flat, length).reshape(*values.shape[:-1], length)
