"""Sums over blocks of causal attention rows by lag ``t - s`` and by key column, without copying the block.

Several metrics reduce a causal pattern ``A[t, s]`` along its diagonals (TAPPA's lag profile, the head span
and WAAD of Li et al. 2025) or along key columns restricted to a lag range (TAPPA's far columns, FAI's future
attention). Blockwise readers (:meth:`mechbench.core.fused.AttentionView.blocks`) hand them ``[..., r, W]``
row blocks whose first row is query ``first``; the functions here reduce such a block in one pass of float32
arithmetic (sums within a block in float32, returned as float64 so that callers add blocks in float64).

A diagonal of a row-major block is itself a strided view: along row ``i`` the keys ``t_i - W + 1 .. t_i`` are
a contiguous run that starts ``R + 1`` elements after the previous row's (``R`` = the row stride). For a key
before 0 that run reaches back into the previous row past its diagonal, where a causal pattern is exactly 0,
so no padded or flipped copy of the block is needed. Every function here therefore requires **causal rows**:
``A[t, s] = 0`` wherever ``s > t`` (as every causal pattern, eager or fused, has).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _contiguous_rows(rows: Tensor) -> Tensor:
    """``rows`` with unit stride along keys and a row stride of at least the row width (copied only if not)."""
    if rows.stride(-1) != 1 or rows.stride(-2) < rows.shape[-1]:
        return rows.contiguous()
    return rows


def _sum_rows(rows: Tensor) -> Tensor:
    """``rows.sum(-2)`` of a ``[..., r, W]`` view with unit key stride, as a ones-vector product: BLAS reads the
    strided view as it is, where a reduction over the row axis is slower."""
    return rows.new_ones(rows.shape[-2]) @ rows


def diagonal_band(rows: Tensor, first: int, width: int) -> tuple[Tensor, Tensor]:
    """The lags ``0 .. width - 1`` of causal pattern ``rows`` ``[..., r, W]`` (first row = query ``first``).

    Returns ``(head, rest)``: ``head`` ``[..., width]`` for row 0 and ``rest`` ``[..., r - 1, width]`` (a view,
    no copy) for rows ``1 ..``, both with entry ``[.., j] = A[t, t - (width - 1 - j)]`` (keys in ascending
    order, so the last entry is lag 0); keys before 0 read as 0. ``width <= W``.
    """
    rows = _contiguous_rows(rows)
    n_rows, n_keys = rows.shape[-2:]
    if not 0 < width <= n_keys or n_rows == 0 or first + n_rows > n_keys:
        raise ValueError(f"a band of {width} lags of rows {first}..{first + n_rows - 1} needs 1 <= width <= "
                         f"{n_keys} keys, at least one row and a key for every row's diagonal")
    row_stride = rows.stride(-2)
    low = first - width + 1  # row 0's first key in the band (negative: before key 0)
    head = rows[..., 0, max(low, 0):first + 1]
    head = F.pad(head, (max(-low, 0), 0)) if low < 0 else head
    # row i (>= 1) starts at key first + i - width + 1: row stride + 1 further on; before key 0 it is in row
    # i - 1 past that row's diagonal (its entries are 0)
    rest = rows.as_strided((*rows.shape[:-2], n_rows - 1, width), (*rows.stride()[:-2], row_stride + 1, 1),
                           rows.storage_offset() + row_stride + low + 1)
    return head, rest


def lag_sums(rows: Tensor, first: int = 0) -> Tensor:
    """``S[..., delta] = sum_t A[t, t - delta]`` over causal pattern ``rows`` ``[..., r, W]`` whose first row is
    query ``first`` (keys before 0 count 0): the rows' lag profile, added up. Returns ``[..., W]`` float64."""
    if rows.shape[-2] == 0:
        return torch.zeros(rows.shape[:-2] + rows.shape[-1:], dtype=torch.float64, device=rows.device)
    head, rest = diagonal_band(rows.float(), first, rows.shape[-1])
    return (_sum_rows(rest) + head).flip(-1).double()


def lag_weighted_rows(rows: Tensor, first: int, weights: Tensor) -> Tensor:
    """``sum_delta weights[delta] A[t, t - delta]`` over the lags ``delta < len(weights)`` for each causal pattern
    row ``t`` of ``rows`` ``[..., r, W]`` (first row = query ``first``). Returns ``[..., r]`` float64."""
    width = min(weights.numel(), rows.shape[-1])
    if rows.shape[-2] == 0:
        return torch.zeros(rows.shape[:-1], dtype=torch.float64, device=rows.device)
    head, rest = diagonal_band(rows.float(), first, width)
    ascending = weights[:width].flip(0).to(device=rows.device, dtype=torch.float32)
    return torch.cat([(head @ ascending)[..., None], rest @ ascending], dim=-1).double()


def _columns_from_lag(rows: Tensor, first: int, min_lag: int) -> Tensor:
    """``sum_t A[t, s]`` over the rows with ``t - s >= min_lag`` per key ``s`` (float32 ``[..., W]``): all rows for
    the keys every row reaches, a lower triangle of an ``r x r`` slice for the keys only later rows reach."""
    n_rows, n_keys = rows.shape[-2:]
    full = min(max(first - min_lag + 1, 0), n_keys)  # keys s <= first - min_lag: every row counts
    stop = min(max(first + n_rows - min_lag, full), n_keys)  # keys s < stop: some row counts
    sums = rows.new_zeros((*rows.shape[:-2], n_keys))
    if full:
        sums[..., :full] = _sum_rows(rows[..., :full])
    if stop > full:  # row i counts for key full + k when i - k >= full + min_lag - first
        sums[..., full:stop] = rows[..., full:stop].tril(first - min_lag - full).sum(-2)
    return sums


def column_sums(rows: Tensor, first: int = 0, min_lag: int = 0, max_lag: int | None = None) -> Tensor:
    """``sum_t A[t, s]`` over pattern ``rows`` ``[..., r, W]`` (first row = query ``first``) with
    ``min_lag <= t - s <= max_lag`` (no upper bound for None), per key ``s``. Returns ``[..., W]`` float64.

    Because only ``t - s`` matters, ``column_sums(rows[..., k:], first - k, ...)`` gives keys ``k ..``."""
    rows = rows.float()
    sums = _columns_from_lag(rows, first, min_lag)
    if max_lag is not None:
        sums -= _columns_from_lag(rows, first, max_lag + 1)
    return sums.double()
