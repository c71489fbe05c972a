"""The encoder path (all-MiniLM-L6-v2): bidirectional facts, masks for ragged batches, sink divisor."""

from __future__ import annotations

import pytest
import torch

from mechbench.analyses.sinks import run_sinks


@pytest.fixture(scope="module")
def minilm():
    from mechbench.models.loading import load_model

    return load_model("minilm-l6")


def test_minilm_is_bidirectional(minilm):
    a = minilm.architecture
    assert (a.n_layers, a.n_heads, a.causal, a.uses_rope) == (6, 12, False, False)


def test_ragged_batches_equal_one_by_one(minilm):
    """Right padding is masked for encoders: batching texts of different lengths changes nothing."""
    texts = ["The quick brown fox jumps over the lazy dog.", "A short one.", "Attention heads, sinks and masks."]
    batched = run_sinks(minilm, texts, batch_size=3, progress=False)
    single = run_sinks(minilm, texts, batch_size=1, progress=False)
    a = batched[batched["metric"] == "sink_score"].sort_values(["example", "layer", "head", "position"])
    b = single[single["metric"] == "sink_score"].sort_values(["example", "layer", "head", "position"])
    assert len(a) == len(b) > 0
    assert torch.allclose(torch.tensor(a["value"].to_numpy()), torch.tensor(b["value"].to_numpy()), atol=1e-5)
    # bidirectional divisor: every query sees every key, so each head's scores average to 1/T
    per_head = a.groupby(["example", "layer", "head"])["value"].agg(["sum", "count"])
    assert torch.allclose(torch.tensor(per_head["sum"].to_numpy()), torch.ones(len(per_head), dtype=torch.float64),
                          atol=1e-5)
