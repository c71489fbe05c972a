"""Pure metric functions of the WAAD/FAI analysis (Li et al. 2025): head spans, WAAD, FAI, head groups, peaks and
token entropies, from attention patterns and logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mechbench.core.lags import column_sums, lag_sums, lag_weighted_rows
from mechbench.errors import ConfigError
from mechbench.stats import ranked_heads

Head = tuple[int, int]


def _response_rows(pattern: Tensor, response_rows: tuple[int, int]) -> tuple[int, int]:
    n_query, n_key = pattern.shape[-2:]
    if n_query != n_key:
        raise ValueError(f"a square self-attention pattern is needed, got {n_query} queries x {n_key} keys")
    start, end = response_rows
    if not 0 <= start < end <= n_key:
        raise ValueError(f"response rows [{start}, {end}) are not a non-empty range of the {n_key} positions")
    return start, end


def lag_weighted_sum(rows: Tensor, first: int) -> Tensor:
    """``sum_t sum_{s<=t} A[t,s] (t - s)`` over causal pattern ``rows`` ``[..., r, keys]`` whose first row is query
    ``first``: the head span's numerator (Eq. 7), from the rows' lag profile. Returns ``[...]`` float64."""
    profile = lag_sums(rows, first)
    return profile @ torch.arange(profile.shape[-1], dtype=torch.float64, device=profile.device)


def windowed_distance(rows: Tensor, first: int, window: int) -> Tensor:
    """``WAAD_t = sum_{s<=t} A[t,s] min(t - s, W)`` (Eq. 9) for each causal pattern row ``t`` of ``rows``
    ``[..., r, keys]`` (first row = query ``first``) as ``W sum_s A[t,s] - sum_{delta<W} (W - delta) A[t, t-delta]``:
    a row sum and ``W`` diagonals, not a weight per entry. Returns ``[..., r]`` float64."""
    below = window - torch.arange(window, dtype=torch.float64, device=rows.device)  # W - delta, delta < W
    return window * rows.float().sum(-1).double() - lag_weighted_rows(rows, first, below)


def future_attention_mass(rows: Tensor, first: int, response_rows: tuple[int, int], h_lo: int = 1,
                          h_hi: int | None = None) -> Tensor:
    """The numerator of FAI (Eq. 10) from one block of causal pattern ``rows`` ``[..., r, keys]`` (first row = query
    ``first``, all inside the response): ``sum_{t in block, t in T(s)} A[t,s]`` for each response key ``s``.
    Summed over the blocks of the response rows it is ``sum_{t in T(s)} A[t,s]``. Returns ``[..., |R|]`` float64."""
    start, end = response_rows
    return column_sums(rows[..., start:end], first - start, h_lo, h_hi)


def horizon_sizes(response_rows: tuple[int, int], h_lo: int = 1, h_hi: int | None = None) -> Tensor:
    """``|T(s)|`` for each response key ``s`` (Eq. 10): rows ``t in R`` with ``s + h_lo <= t <= min(N, s + h_hi)``."""
    start, end = response_rows
    keys = torch.arange(start, end)
    last = torch.full_like(keys, end - 1) if h_hi is None else (keys + h_hi).clamp(max=end - 1)
    return (last - keys - h_lo + 1).clamp(min=0)


def fai_from_mass(received: Tensor, sizes: Tensor) -> Tensor:
    """``FAI_s = received_s / |T(s)|``, NaN where ``T(s)`` is empty."""
    sizes = sizes.to(received.device)
    return torch.where(sizes > 0, received / sizes.clamp(min=1), float("nan"))


def head_spans(pattern: Tensor, response_rows: tuple[int, int]) -> Tensor:
    """Mean attention distance of each head over the response rows (Li et al. 2025, Eq. 7).

    ``pattern``: ``[..., T, T]`` causal attention; ``response_rows``: ``[start, end)`` query positions
    ``R``. ``d = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)``. Returns ``[...]`` float64.
    """
    start, end = _response_rows(pattern, response_rows)
    return lag_weighted_sum(pattern[..., start:end, :], start) / (end - start)


def waad(group_map: Tensor, response_rows: tuple[int, int], window: int = 10) -> Tensor:
    """Windowed Average Attention Distance of each response row (Li et al. 2025, Eq. 9).

    ``WAAD_t = sum_{s<=t} Abar_loc[t,s] min(t - s, W)`` for ``t`` in ``[start, end)``, so
    ``0 <= WAAD_t <= W``. ``group_map``: ``[..., T, T]`` (a group mean or single heads).
    Returns ``[..., |R|]`` float64.
    """
    start, end = _response_rows(group_map, response_rows)
    return windowed_distance(group_map[..., start:end, :], start, window)


def fai(group_map: Tensor, response_rows: tuple[int, int], h_lo: int = 1, h_hi: int | None = None) -> Tensor:
    """Future Attention Influence of each response token (Li et al. 2025, Eq. 10).

    ``FAI_s = 1/|T(s)| sum_{t in T(s)} Abar_glob[t,s]``, ``T(s) = {t in R : s + h_lo <= t <= min(N, s + h_hi)}``
    with ``N`` the last response position; ``h_hi=None`` = to the end of the response. For ``s`` in
    ``[start, end)``; NaN where ``T(s)`` is empty. Returns ``[..., |R|]`` float64.
    """
    start, end = _response_rows(group_map, response_rows)
    received = future_attention_mass(group_map[..., start:end, :], start, (start, end), h_lo, h_hi)
    return fai_from_mass(received, horizon_sizes((start, end), h_lo, h_hi))


def split_heads(spans: Tensor, local_frac: float = 0.3, global_frac: float = 0.3) -> tuple[list[Head], list[Head]]:
    """Local and global heads (Li et al. 2025, Sec. 4): the bottom ``local_frac`` and the top
    ``global_frac`` of the heads by span ``d``.

    ``spans``: ``[layer, head]``; NaN heads (layers not recorded) are in neither group. Group sizes are
    ``round(frac x n)`` (at least 1) of the ``n`` heads with a span; ties keep layer-then-head order.
    Returns ``(local, global)`` lists of ``(layer, head)``, closest / farthest first.
    """
    ranked = [head for head in ranked_heads(spans) if not torch.isnan(spans[head])]
    n_local, n_global = (max(1, int(frac * len(ranked) + 0.5)) for frac in (local_frac, global_frac))
    if n_local + n_global > len(ranked):
        raise ConfigError(f"waad_fai: {len(ranked)} heads cannot hold {n_local} local and {n_global} global heads; "
                          "lower local_frac / global_frac or record more layers")
    return ranked[::-1][:n_local], ranked[:n_global]


def kurtosis(values: Tensor) -> Tensor:
    """Excess kurtosis over the last axis, NaN entries ignored (population moments, ``scipy.stats.kurtosis``'s
    default); NaN with fewer than 4 values or no variance."""
    present = ~torch.isnan(values)
    n = present.sum(-1)
    mean = values.nan_to_num(0.0).sum(-1) / n.clamp(min=1)
    deviation = (values - mean[..., None]).nan_to_num(0.0)
    m2 = deviation.pow(2).sum(-1) / n.clamp(min=1)
    m4 = deviation.pow(4).sum(-1) / n.clamp(min=1)
    return torch.where((n >= 4) & (m2 > 0), m4 / m2.clamp(min=1e-300).pow(2) - 3.0, float("nan"))


def find_peaks(values: Tensor, quantile: float = 0.9) -> Tensor:
    """[INFERRED] Peaks of a 1-D series (the paper does not give its rule): local maxima at or above the
    series' ``quantile`` (NaN ignored).

    A position is a local maximum when it is ``>=`` both neighbours and ``>`` at least one (an edge
    compares with its only neighbour; a NaN neighbour counts as lower), so a flat series has no
    peak. Returns a bool mask.
    """
    present = ~torch.isnan(values)
    if not present.any():
        return present
    filled = values.double().nan_to_num(nan=float("-inf"))
    left = torch.cat([filled[:1], filled[:-1]])
    right = torch.cat([filled[1:], filled[-1:]])
    threshold = torch.quantile(values[present].double(), quantile)
    local_max = (filled >= left) & (filled >= right) & ((filled > left) | (filled > right))
    return present & local_max & (filled >= threshold)


def near(targets: Tensor, before: int, after: int) -> Tensor:
    """For each position ``i`` of a bool series: is some target at ``u`` with ``i - before <= u <= i + after``."""
    offsets = torch.arange(targets.numel())[:, None] - targets.nonzero().flatten()[None, :]  # i - u
    return ((offsets <= before) & (offsets >= -after)).any(-1)


def random_positions(pool: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` positions drawn without replacement from the True entries of ``pool`` (all of them when fewer)."""
    candidates = pool.nonzero().flatten()
    chosen = torch.zeros_like(pool)
    chosen[candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]] = True
    return chosen


def next_token_entropy(logits: Tensor, slice_bytes: int = 2**22) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last axis: ``-sum_v p_v log p_v`` in float32 (1e-6 relative
    to the log-normaliser; a float64 pass over the vocabulary took 16 % of a 2k-token forward pass), as float64.

    Rows go through in slices of at most ``slice_bytes`` so that the three passes over a slice stay in cache (3x
    faster than whole 128-row chunks of a 49k vocabulary)."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(1, slice_bytes // (4 * max(1, flat.shape[-1])))
    entropies = torch.empty(flat.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, flat.shape[0], rows):
        logprobs = flat[start:start + rows].float().log_softmax(-1)
        entropies[start:start + rows] = -(logprobs.exp() * logprobs).sum(-1)  # torch's cascade sum: no n eps drift
    return entropies.reshape(logits.shape[:-1])


def _group_mean(per_head: Tensor, heads: Sequence[Head]) -> Tensor:
    """Mean of ``per_head[layer, head, ...]`` over ``heads``: the metric of the group's mean map (linearity)."""
    return per_head[[layer for layer, _ in heads], [head for _, head in heads]].mean(0)
