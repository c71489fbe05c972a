"""Sink score and sink rate against independent loop computations of the paper's formulas."""

from __future__ import annotations

import math

import numpy as np
import torch

from mechbench.analyses.sinks import sink_rate, sink_scores


def random_causal_pattern(batch: int, heads: int, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, n, n, generator=generator)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def loop_sink_score(pattern: torch.Tensor, b: int, h: int, k: int, length: int, causal: bool) -> float:
    """alpha[k] = sum_{t=k}^{T-1} A[t,k] / (T-k) (causal) or sum_t A[t,k] / T, written as plain loops."""
    first = k if causal else 0
    total = sum(float(pattern[b, h, t, k]) for t in range(first, length))
    return total / (length - first)


def test_causal_sink_scores_match_the_loop_definition():
    pattern = random_causal_pattern(2, 3, 9)
    scores = sink_scores(pattern)
    for b in range(2):
        for h in range(3):
            for k in range(9):
                assert math.isclose(scores[b, h, k].item(), loop_sink_score(pattern, b, h, k, 9, True), rel_tol=1e-6)


def test_last_key_is_seen_only_by_itself():
    pattern = random_causal_pattern(1, 2, 6)
    torch.testing.assert_close(sink_scores(pattern)[0, :, -1], pattern[0, :, -1, -1].double())


def test_right_padding_is_ignored_and_marked_nan():
    pattern = random_causal_pattern(1, 2, 8, seed=3)
    short = random_causal_pattern(1, 2, 5, seed=4)
    padded = torch.zeros(1, 2, 8, 8)
    padded[..., :5, :5] = short
    padded[..., 5:, :] = 1.0 / 8  # garbage rows of pad queries must not count
    both = torch.cat([pattern, padded])
    scores = sink_scores(both, lengths=torch.tensor([8, 5]))
    torch.testing.assert_close(scores[1, :, :5], sink_scores(short)[0])
    assert torch.isnan(scores[1, :, 5:]).all()
    torch.testing.assert_close(scores[0], sink_scores(pattern)[0])


def test_bidirectional_divisor_is_the_sequence_length():
    generator = torch.Generator().manual_seed(1)
    pattern = torch.randn(1, 1, 5, 5, generator=generator).softmax(-1)
    scores = sink_scores(pattern, causal=False)
    for k in range(5):
        assert math.isclose(scores[0, 0, k].item(), loop_sink_score(pattern, 0, 0, k, 5, False), rel_tol=1e-6)
    # every query's row sums to 1, so the scores of a bidirectional head average to 1/T
    assert math.isclose(scores.sum().item(), 1.0, rel_tol=1e-6)


def test_sink_rate_counts_entries_above_epsilon_and_skips_missing():
    scores = torch.tensor([[[0.9, 0.1], [0.31, float("nan")]], [[0.3, 0.5], [0.2, 0.4]]], dtype=torch.float64)
    rate = sink_rate(scores, epsilon=0.3)
    # position 0: 0.9, 0.31 above; 0.3 (not strictly above) and 0.2 not -> 2/4
    # position 1: 0.5, 0.4 above out of 3 present values -> 2/3
    torch.testing.assert_close(rate, torch.tensor([50.0, 200.0 / 3], dtype=torch.float64))


def test_received_attention_summed_over_row_blocks_equals_the_whole_pattern():
    from mechbench.analyses.sinks import received_attention, scores_from_received

    pattern = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(7)).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    lengths = torch.tensor([10, 6])
    blocks = sum(received_attention(pattern[..., first:first + 3, :], first, lengths) for first in range(0, 10, 3))
    torch.testing.assert_close(scores_from_received(blocks, lengths), sink_scores(pattern, lengths), equal_nan=True)


def test_run_sinks_is_the_same_on_the_fused_and_eager_paths(tiny_llama):
    from mechbench.analyses.sinks import run_sinks

    texts = ["the cat sat on the mat", "a dog ran to the park and the cat sat"]
    frames = {path: run_sinks(tiny_llama, texts, massive=None, progress=False, attention=path)
              for path in ("fused", "eager")}
    fused, eager = (frames[p][frames[p]["metric"] == "sink_score"]["value"].to_numpy() for p in ("fused", "eager"))
    assert len(fused) == len(eager) == 2 * 2 * 4 * 9 and abs(fused - eager)[~np.isnan(eager)].max() < 1e-5
