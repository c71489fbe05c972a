"""Lag and column sums of causal row blocks (core/lags.py) against direct float64 formulas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mechbench.core.lags import column_sums, diagonal_band, lag_sums, lag_weighted_rows


def causal_pattern(n: int, heads: int = 3, seed: int = 0) -> Tensor:
    scores = torch.randn(heads, n, n, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


def lags(first: int, n_rows: int, n_keys: int) -> Tensor:
    return torch.arange(first, first + n_rows)[:, None] - torch.arange(n_keys)[None, :]


def direct_lag_sums(rows: Tensor, first: int) -> Tensor:
    lag = lags(first, *rows.shape[-2:])
    return torch.stack([(rows.double() * (lag == d)).sum((-1, -2)) for d in range(rows.shape[-1])], -1)


def direct_column_sums(rows: Tensor, first: int, min_lag: int, max_lag: int | None) -> Tensor:
    lag = lags(first, *rows.shape[-2:])
    keep = (lag >= min_lag) & (lag <= (max_lag if max_lag is not None else rows.shape[-1]))
    return (rows.double() * keep).sum(-2)


BLOCKS = [(0, 1), (0, 5), (3, 4), (7, 1), (10, 6), (0, 16), (15, 1)]


@pytest.mark.parametrize(("first", "n_rows"), BLOCKS)
def test_lag_sums_of_trimmed_blocks(first: int, n_rows: int) -> None:
    pattern = causal_pattern(16)
    rows = pattern[:, first:first + n_rows, :first + n_rows].contiguous()  # trimmed: keys stop at the last row
    torch.testing.assert_close(lag_sums(rows, first), direct_lag_sums(rows, first), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("first", "n_rows"), BLOCKS)
def test_lag_sums_of_strided_slices_of_a_batch(first: int, n_rows: int) -> None:
    # one example of a padded batch: a slice whose rows and heads keep the batch's strides, keys cut at its length
    batch = torch.stack([causal_pattern(20, seed=1), causal_pattern(20, seed=2)])
    length = 16
    rows = batch[1, :, first:first + n_rows, :length]
    assert not rows.is_contiguous()
    torch.testing.assert_close(lag_sums(rows, first), direct_lag_sums(rows, first), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("first", "n_rows"), BLOCKS)
@pytest.mark.parametrize("width", [1, 3, 10])
def test_lag_weighted_rows(first: int, n_rows: int, width: int) -> None:
    pattern = causal_pattern(16)
    rows = pattern[:, first:first + n_rows, :first + n_rows]
    width = min(width, rows.shape[-1])
    weights = torch.arange(width, 0, -1).double() * 0.5  # any weights per lag
    lag = lags(first, *rows.shape[-2:])
    per_lag = torch.zeros(lag.shape, dtype=torch.float64)
    for d in range(width):
        per_lag += (lag == d) * weights[d]
    direct = (rows.double() * per_lag).sum(-1)
    torch.testing.assert_close(lag_weighted_rows(rows, first, weights), direct, rtol=1e-6, atol=1e-7)


def test_diagonal_band_is_a_view_with_zeros_before_key_0() -> None:
    pattern = causal_pattern(8)
    head, rest = diagonal_band(pattern[:, 2:], 2, 5)
    assert rest.untyped_storage().data_ptr() == pattern.untyped_storage().data_ptr()  # a view: no copy
    for i in range(6):
        t = 2 + i
        band = head if i == 0 else rest[:, i - 1]
        for j in range(5):
            key = t - (4 - j)
            expected = pattern[:, t, key] if key >= 0 else torch.zeros(3)
            torch.testing.assert_close(band[:, j], expected)


@pytest.mark.parametrize(("first", "n_rows"), BLOCKS)
@pytest.mark.parametrize(("min_lag", "max_lag"), [(0, None), (1, None), (4, None), (1, 3), (2, 2), (0, 20)])
def test_column_sums_over_a_lag_range(first: int, n_rows: int, min_lag: int, max_lag: int | None) -> None:
    pattern = causal_pattern(16)
    rows = pattern[:, first:first + n_rows, :first + n_rows]
    torch.testing.assert_close(column_sums(rows, first, min_lag, max_lag),
                               direct_column_sums(rows, first, min_lag, max_lag), rtol=1e-6, atol=1e-7)


def test_column_sums_of_a_key_range_shift_both_positions() -> None:
    pattern = causal_pattern(16)
    rows = pattern[:, 9:14, :14]
    whole = direct_column_sums(rows, 9, 1, None)
    torch.testing.assert_close(column_sums(rows[..., 5:], 9 - 5, 1), whole[..., 5:], rtol=1e-6, atol=1e-7)


def test_blocks_add_up_to_the_whole_pattern() -> None:
    pattern = causal_pattern(30)
    total = sum(torch.nn.functional.pad(lag_sums(pattern[:, first:min(30, first + 7), :min(30, first + 7)], first),
                                        (0, 30 - min(30, first + 7))) for first in range(0, 30, 7))
    torch.testing.assert_close(total, direct_lag_sums(pattern, 0), rtol=1e-6, atol=1e-7)


def test_rows_past_the_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="a key for every row"):
        lag_sums(causal_pattern(8)[:, 4:8, :6], 4)
