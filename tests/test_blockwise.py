"""Blockwise WAAD / FAI (Li et al. 2025) and TAPPA (Yang et al. 2026) against the full-pattern formulas (issue 10).

``reference_*`` below are the full-pattern implementations these analyses had before they read attention block by
block (copied from that code: one ``[head, T, T]`` float64 tensor per quantity), so a change of any number is
caught: the pure functions, the accumulators fed small row blocks, the reducers on a fused view with blocks of a
few rows over a right-padded batch, and the analyses' fused path against their eager path on a real (tiny) Llama.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mechbench.analyses.tappa import (
    BandAccumulator,
    PatternAccumulator,
    PatternCriteria,
    TappaConfig,
    TappaReducer,
    _mean_key_term,
    pattern_scores,
    record_main,
    rope_band_advantage,
)
from mechbench.analyses.waad_fai import DistanceConfig, DistanceReducer, fai, head_spans, run_distance, waad
from mechbench.core.dataset import Batch
from mechbench.core.fused import FusedAttention
from mechbench.tasks.reasoning import Transcript

SCORES = ("vertical", "diagonal", "periodic", "diffuse", "period")

#: The accumulators (TAPPA's, the head span, WAAD and FAI) sum float32 pattern entries in float32 within a block
#: and add blocks in float64 (the references compute everything in float64): they agree to float32 rounding
FLOAT32_RTOL = 1e-6
#: FAI with an upper horizon is the difference of two column sums (rows past h_lo minus rows past h_hi), each
#: summed in float32: absolute error ~ float32 epsilon x the column's mass
FAI_ATOL = 1e-7


# ---------------------------------------------------------------------------------------------- references
def reference_lags(start: int, end: int, n: int) -> Tensor:
    return (torch.arange(start, end)[:, None] - torch.arange(n)[None, :]).clamp(min=0).double()


def reference_head_spans(pattern: Tensor, rows: tuple[int, int]) -> Tensor:
    start, end = rows
    return (pattern[..., start:end, :].double() * reference_lags(start, end, pattern.shape[-1])).sum(-1).mean(-1)


def reference_waad(pattern: Tensor, rows: tuple[int, int], window: int) -> Tensor:
    start, end = rows
    weights = reference_lags(start, end, pattern.shape[-1]).clamp(max=window)
    return (pattern[..., start:end, :].double() * weights).sum(-1)


def reference_fai(pattern: Tensor, rows: tuple[int, int], h_lo: int, h_hi: int | None) -> Tensor:
    start, end = rows
    positions = torch.arange(start, end)
    gap = positions[:, None] - positions[None, :]
    future = gap >= h_lo
    if h_hi is not None:
        future &= gap <= h_hi
    received = (pattern[..., start:end, start:end].double() * future).sum(-2)
    count = future.sum(0)
    return torch.where(count > 0, received / count.clamp(min=1), float("nan"))


def reference_lag_profile(pattern: Tensor) -> Tensor:
    n = pattern.shape[-1]
    t, delta = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return pattern.gather(-1, (t - delta).clamp(min=0).expand(*pattern.shape[:-2], n, n)) * (delta <= t)


def reference_pattern_scores(pattern: Tensor, criteria: PatternCriteria) -> dict[str, Tensor]:
    w, n, lead = criteria.local_window, pattern.shape[-1], pattern.shape[:-2]
    a = pattern.double()
    rows = slice(w + 1, n)
    mean_lag = reference_lag_profile(a)[..., rows, :].mean(-2)
    diagonal = torch.maximum(mean_lag[..., : w + 1].sum(-1), mean_lag[..., w + 1:].max(-1).values)
    t, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    far = (t - j > w) & (t > w)
    far_mass = a * far
    column = far_mass.sum(-2) / far.sum(0).clamp(min=1)
    top = column.topk(min(criteria.n_columns, n), dim=-1).indices
    on_columns = torch.zeros_like(column).scatter(-1, top, 1.0)
    vertical = (far_mass * on_columns[..., None, :]).sum(-1)[..., rows].mean(-1)
    rest = reference_lag_profile(far_mass * (1 - on_columns[..., None, :]))[..., rows, :].mean(-2)
    best = torch.zeros(lead, dtype=torch.float64)
    period = torch.full(lead, float("nan"), dtype=torch.float64)
    for p in range(w + 1, min(criteria.max_period, n - 1) + 1):
        multiples = torch.arange(p, n, p)
        if multiples.numel() < 2:
            continue
        at = rest[..., multiples]
        score = at.sum(-1) - at.max(-1).values
        better = score > best
        best = torch.where(better, score, best)
        period = torch.where(better, torch.tensor(float(p), dtype=torch.float64), period)
    entropy = -(a * a.clamp_min(1e-300).log()).sum(-1)[..., rows]
    diffuse = (entropy / torch.arange(w + 2, n + 1, dtype=torch.float64).log()).mean(-1)
    return {"vertical": vertical, "diagonal": diagonal, "periodic": best, "diffuse": diffuse, "period": period}


def reference_band_advantage(rot_q: Tensor, rot_k: Tensor, pattern: Tensor, n_bands: int) -> Tensor:
    heads, n, d = rot_q.shape
    half = torch.arange(d // 2)
    channels = [torch.cat([band, band + d // 2]) for band in half.tensor_split(n_bands)]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    weights = pattern.double() - causal.double() / causal.sum(-1).double()[:, None]
    out = torch.zeros(heads, n_bands, dtype=torch.float64)
    for index, chosen in enumerate(channels):
        contribution = rot_q[..., chosen].double() @ rot_k[..., chosen].double().transpose(-1, -2) / math.sqrt(d)
        out[:, index] = (weights * contribution.masked_fill(~causal, 0.0)).sum(-1)[:, 1:].mean(-1)
    return out


# ---------------------------------------------------------------------------------------------- inputs
def causal_scores(q: Tensor, k: Tensor) -> Tensor:
    n = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))


def random_qk(shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=generator) * 1.5 for _ in range(2))


def planted_patterns(n: int = 40) -> Tensor:
    """Four heads: softmax of random logits, a sink head (most mass on key 0), a period-6 head with exact zeros,
    and a head with exact zeros everywhere but two columns (where the removal of the top columns must give 0)."""
    q, k = random_qk((2, n, 16), seed=0)
    soft = causal_scores(q.double(), k.double()).softmax(-1)
    sink = 0.9 * torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), n).double() + 0.1 * soft[1]
    periodic = torch.zeros(n, n, dtype=torch.float64)
    columns = torch.zeros(n, n, dtype=torch.float64)
    for t in range(n):
        keys = list(range(t - 6, -1, -6)) or [t]
        periodic[t, keys] = 1 / len(keys)
        on = [j for j in (2, 9) if j <= t] or [t]
        columns[t, on] = 1 / len(on)
    return torch.stack([soft[0], sink, periodic, columns]).float()


def assert_scores_equal(got: dict[str, Tensor], expected: dict[str, Tensor], rtol: float, atol: float) -> None:
    for name in SCORES:
        torch.testing.assert_close(got[name].double(), expected[name].double(), rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda message, name=name: f"{name}: {message}")


# ---------------------------------------------------------------------------------------------- pure functions
def test_distance_functions_equal_the_full_pattern_formulas():
    pattern = planted_patterns()
    for rows, h_lo, h_hi in (((12, 40), 1, None), ((5, 40), 0, 7), ((30, 33), 2, 2)):
        torch.testing.assert_close(head_spans(pattern, rows), reference_head_spans(pattern, rows),
                                   rtol=FLOAT32_RTOL, atol=1e-12)
        torch.testing.assert_close(waad(pattern, rows, 4), reference_waad(pattern, rows, 4),
                                   rtol=FLOAT32_RTOL, atol=1e-12)
        torch.testing.assert_close(fai(pattern, rows, h_lo, h_hi), reference_fai(pattern, rows, h_lo, h_hi),
                                   rtol=FLOAT32_RTOL, atol=FAI_ATOL, equal_nan=True)


@pytest.mark.parametrize("block", [1, 3, 40])
def test_pattern_accumulator_over_blocks_equals_the_full_pattern_scores(block):
    pattern = planted_patterns()
    criteria = PatternCriteria(local_window=3, n_columns=2, max_period=12)
    expected = reference_pattern_scores(pattern, criteria)
    assert expected["period"][2] == 6.0 and expected["vertical"][1] > 0.85  # the planted heads are what they say
    assert expected["periodic"][3] == 0.0 and math.isnan(expected["period"][3])  # all far mass on the top columns
    accumulator = PatternAccumulator(40, (4,), criteria)
    for first in reversed(range(0, 40, block)):  # any order of blocks
        accumulator.add(pattern[:, first:first + block], first)
    assert_scores_equal(accumulator.scores(lambda keys: pattern[..., keys]), expected, rtol=FLOAT32_RTOL,
                        atol=1e-12)
    assert_scores_equal(pattern_scores(pattern, criteria), expected, rtol=FLOAT32_RTOL, atol=1e-12)


def test_band_accumulator_over_blocks_equals_the_full_pattern_advantage():
    q, k = random_qk((3, 30, 8), seed=1)
    pattern = causal_scores(q, k).softmax(-1)
    expected = reference_band_advantage(q, k, pattern, n_bands=2)
    assert (expected.abs() > 1e-3).all()
    bands = BandAccumulator(q, k, n_bands=2)
    for first in range(0, 30, 4):
        bands.add(pattern[:, first:first + 4], first)
    torch.testing.assert_close(bands.advantage(), expected, rtol=FLOAT32_RTOL, atol=1e-12)
    torch.testing.assert_close(rope_band_advantage(q, k, pattern, n_bands=2), expected, rtol=FLOAT32_RTOL,
                               atol=1e-12)


def test_mean_key_term_in_chunks_equals_the_whole_cumulative_mean():
    q, k = random_qk((2, 23, 4), seed=4)
    mean_key = k.double().cumsum(-2) / torch.arange(1, 24, dtype=torch.float64)[:, None]
    expected = (q.double() * mean_key)[..., 1:, :].sum(-2)  # rows t >= 1
    for chunk in (1, 5, 23, 64):  # chunks that split the rows anywhere, including after row 0
        torch.testing.assert_close(_mean_key_term(q, k, chunk), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- reducers on a view
def padded_view(lengths: list[int], heads: int = 3, d: int = 16, block_rows: int = 5) -> tuple[FusedAttention, Batch]:
    """A fused view of a right-padded batch whose blocks are ``block_rows`` rows, and its batch.

    Integer queries and keys and a power-of-two scale (``d = 16``) make every logit exact whatever the matmul's
    blocking, so a pattern entry is the same float32 number in any row block, column or the whole pattern."""
    n = max(lengths)
    generator = torch.Generator().manual_seed(2)
    q, k = (torch.randint(-2, 3, (len(lengths), heads, n, d), generator=generator).float() for _ in range(2))
    logsumexp = causal_scores(q, k).logsumexp(-1)
    view = FusedAttention(0, q, k, logsumexp, 1 / math.sqrt(d), None, True, block_bytes=4 * len(lengths) * heads * n
                          * block_rows)
    batch = Batch(tokens=torch.zeros(len(lengths), n, dtype=torch.long), lengths=torch.tensor(lengths),
                  indices=torch.tensor([1, 0]))
    return view, batch


def test_distance_reducer_on_small_blocks_of_a_padded_batch_equals_the_formulas():
    view, batch = padded_view([23, 17])
    assert view.block_rows() == 5
    prompts = [6, 9]  # example 0 is batch row 1, example 1 batch row 0
    lengths = [17, 23]
    reducer = DistanceReducer(prompts, lengths, n_layers=1, n_heads=3, window=4, h_lo=1, h_hi=5)
    reducer(0, view, batch)
    for row, index in ((0, 1), (1, 0)):
        pattern = view.pattern()[row, :, :lengths[index], :lengths[index]]
        rows = (prompts[index], lengths[index])
        torch.testing.assert_close(reducer.spans[index, 0], reference_head_spans(pattern, rows),
                                   rtol=FLOAT32_RTOL, atol=1e-12)
        torch.testing.assert_close(reducer.waad[index][0], reference_waad(pattern, rows, 4),
                                   rtol=FLOAT32_RTOL, atol=1e-12)
        torch.testing.assert_close(reducer.fai[index][0], reference_fai(pattern, rows, 1, 5),
                                   rtol=FLOAT32_RTOL, atol=FAI_ATOL,
                                   equal_nan=True)


def test_tappa_reducer_on_small_blocks_of_a_padded_batch_equals_the_formulas():
    view, batch = padded_view([23, 17])
    criteria = PatternCriteria(local_window=2, n_columns=2, max_period=8)
    reducer = TappaReducer(2, 1, 3, kv_window=8, mode="cosine", rbf_sigma=1.0, criteria=criteria, n_bands=2)
    reducer(0, view, batch)
    for row, index, n in ((0, 1, 23), (1, 0, 17)):
        pattern = view.pattern()[row, :, :n, :n]
        expected = reference_pattern_scores(pattern, criteria)
        assert_scores_equal({name: values[index, 0] for name, values in reducer.scores.items()}, expected,
                            rtol=FLOAT32_RTOL, atol=1e-12)
        q, k = view.query[row, :, :n], view.key[row, :, :n]
        torch.testing.assert_close(reducer.bands[index, 0], reference_band_advantage(q, k, pattern, 2),
                                   rtol=FLOAT32_RTOL, atol=1e-12)


# ---------------------------------------------------------------------------------------------- fused vs eager
TEXTS = ["the cat sat on the mat . the dog ran to the house . it was big . she saw the red house .",
         "one two three four five six seven eight nine ten . he went home . they ran to the small dog ."]


@pytest.fixture
def small_fused_blocks(monkeypatch):
    """Fused views hand out blocks of 3 rows, so the block loops run many times on a short input."""
    monkeypatch.setattr(FusedAttention, "block_rows", lambda self: 3)


def test_tappa_main_pass_fused_equals_eager(tiny_llama, small_fused_blocks):
    dataset = tiny_llama.tokenize_dataset(TEXTS)
    assert len(set(dataset.lengths)) == 2  # a right-padded batch
    results = {path: record_main(tiny_llama, dataset, TappaConfig(kv_window=8, batch_size=2, attention=path),
                                 progress=False) for path in ("fused", "eager")}
    fused, eager = results["fused"], results["eager"]
    assert not torch.isnan(eager.kv_qsim).any() and not torch.isnan(eager.bands).any()
    torch.testing.assert_close(fused.kv_qsim, eager.kv_qsim, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.bands, eager.bands, rtol=1e-5, atol=1e-6)
    assert_scores_equal({name: fused.scores[name] for name in SCORES}, {name: eager.scores[name] for name in SCORES},
                        rtol=1e-5, atol=1e-6)


def test_distance_fused_equals_eager(tiny_llama, small_fused_blocks):
    dataset = tiny_llama.tokenize_dataset(TEXTS)
    transcripts = [Transcript(id=f"t{i}", prompt_ids=tokens[:9], response_ids=tokens[9:])
                   for i, tokens in enumerate(dataset.tokens)]
    frames = {path: run_distance(tiny_llama, transcripts, DistanceConfig(n_random=2, batch_size=2, h_hi=6,
                                                                         attention=path), progress=False)
              for path in ("fused", "eager")}
    fused, eager = frames["fused"], frames["eager"]
    assert fused["metric"].tolist() == eager["metric"].tolist() and len(fused) > 100
    numbers = [column for column in ("value", "baseline") if column in fused]
    torch.testing.assert_close(torch.tensor(fused[numbers].to_numpy(dtype=float)),
                               torch.tensor(eager[numbers].to_numpy(dtype=float)), rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    assert fused["group"].fillna("").tolist() == eager["group"].fillna("").tolist()
