"""Real behaviour on the default model (SmolLM2-135M-Instruct): one load, a few focused checks."""

from __future__ import annotations

import pytest
import torch

from mechbench.analyses.sinks import run_sinks, sink_scores
from mechbench.tasks.texts import load_texts

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from mechbench.models.loading import load_model

    return load_model("smollm2-135m")


def test_architecture_facts(smollm2):
    a = smollm2.architecture
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.d_head, a.positional, a.causal) == (30, 9, 3, 64, "rotary", True)
    ids, pieces = smollm2.tokenize("Hello world")
    assert ids[0].item() == smollm2.tokenizer.bos_token_id == 1 and pieces[0] == "<|im_start|>"
    no_bos, _ = smollm2.tokenize("Hello world", prepend_bos=False)
    assert torch.equal(no_bos, ids[1:])


def test_position_zero_dominates_sink_scores(smollm2):
    ids, texts = load_texts("builtin", limit=4)
    frame = run_sinks(smollm2, texts, example_ids=ids, max_tokens=64, progress=False)
    mean = frame[frame["metric"] == "sink_score_mean"].pivot_table(index=["layer", "head"], columns="position",
                                                                    values="value")
    # the last positions are seen by few queries; compare position 0 with the first 48
    share_argmax_zero = (mean.loc[:, :47].idxmax(axis=1) == 0).mean()
    assert share_argmax_zero > 0.75
    rate = frame[frame["metric"] == "sink_rate"].set_index("position")["value"]
    assert rate[0] > 40 and rate.drop(0).max() < 15  # Sink_1 is large, later positions rarely sinks
    # massive activations (Sun et al.): one residual channel of the first token, from the middle layers on
    # (8 built-in texts: channel 507 at position 0, |h| ~ 24,900 in layers 11-27, up to ~15,700x the median)
    massive = frame[(frame["metric"] == "massive_activation") & frame["is_massive"].fillna(False).astype(bool)]
    assert set(massive["position"]) == {0}
    assert set(range(11, 28)) <= set(massive["layer"])
    top = frame[(frame["metric"] == "massive_activation") & (frame["rank"] == 0) & (frame["layer"] == 15)]
    assert set(top["channel"]) == {507} and (top["value"] > 10_000).all()
    # hidden sinks (ACT rule, threshold 0.1): most heads have a sink after the first token somewhere
    hidden = frame[frame["metric"] == "hidden_sink"]
    assert (hidden["position"] > 0).all()
    assert hidden.groupby(["layer", "head"]).ngroups > 135


@pytest.mark.parametrize(("attention", "tolerance"), [("eager", 1e-6), ("fused", 1e-5)])
def test_streaming_equals_run_with_cache_on_the_real_model(smollm2, attention, tolerance):
    """Both pattern paths give run_with_cache's scores; the fused kernel to float32 rounding over 30 layers."""
    text = "The lighthouse keeper wrote the price of lamp oil in his logbook every evening."
    streamed = run_sinks(smollm2, [text], max_tokens=64, progress=False, attention=attention)
    ids, _ = smollm2.tokenize(text)
    with torch.no_grad():
        _, cache = smollm2.bridge.run_with_cache(ids[None], names_filter=lambda n: n.endswith("hook_pattern"))
    per_example = streamed[streamed["metric"] == "sink_score"].sort_values(["layer", "head", "position"])
    ours = torch.tensor(per_example["value"].to_numpy()).view(30, 9, len(ids))
    reference = torch.stack([sink_scores(cache[f"blocks.{layer}.attn.hook_pattern"])[0] for layer in range(30)])
    assert (ours - reference).abs().max() < tolerance
