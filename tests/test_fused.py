"""The fused attention path (issue 10): exact patterns from q, k and the softmax normaliser."""

from __future__ import annotations

import math

import pytest
import torch

from mechbench.core.dataset import TokenDataset
from mechbench.core.fused import (
    DenseAttention,
    FusedAttention,
    StreamedAttention,
    Streaming,
    fused_attention,
    supports_fused,
)
from mechbench.core.recorder import ATTENTION, Recorder
from mechbench.errors import CapabilityError

TOLERANCE = 1e-5


def eager_patterns(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    kept: dict[int, torch.Tensor] = {}
    def keep(pattern: torch.Tensor, hook, layer: int) -> None:
        kept[layer] = pattern.detach().clone()
    hooks = [(model.hook_name("pattern", layer), lambda p, hook, layer=layer: keep(p, hook, layer))
             for layer in range(model.n_layers)]
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return kept


def fused_views(model, tokens: torch.Tensor, **kwargs) -> tuple[dict[int, FusedAttention], torch.Tensor]:
    views: dict[int, FusedAttention] = {}
    with torch.no_grad(), fused_attention(model.bridge, lambda view: views.__setitem__(view.layer, view), **kwargs):
        logits = model.bridge(tokens)
    return views, logits


def test_fused_patterns_equal_eager_hook_pattern_under_gqa(tiny_llama) -> None:
    assert supports_fused(tiny_llama)
    tokens = torch.randint(4, tiny_llama.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    eager = eager_patterns(tiny_llama, tokens)
    views, _ = fused_views(tiny_llama, tokens)
    assert sorted(views) == [0, 1]
    for layer, view in views.items():
        assert view.key.shape[1] == tiny_llama.n_heads  # 2 KV heads repeated to 4 query heads
        assert (view.pattern() - eager[layer]).abs().max() < TOLERANCE
        assert torch.allclose(view.pattern().sum(-1), torch.ones(2, 4, 24), atol=1e-5)


def test_blocks_and_columns_rebuild_the_same_pattern(tiny_llama) -> None:
    tokens = torch.randint(4, tiny_llama.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    views, _ = fused_views(tiny_llama, tokens, block_bytes=4 * 4 * 30 * 7)  # 7 rows per block
    view = views[1]
    blocks = list(view.blocks())
    assert [first for first, _ in blocks] == [0, 7, 14, 21, 28]
    whole = view.pattern()
    assert (torch.cat([rows for _, rows in blocks], dim=-2) - whole).abs().max() < 1e-6
    keys = torch.tensor([0, 5, 29])
    assert (view.columns(keys) - whole[..., keys]).abs().max() < 1e-6
    assert torch.all(whole.triu(1) == 0)  # causal: nothing above the diagonal


def test_fused_forward_gives_the_eager_logits_and_restores_the_model(tiny_llama) -> None:
    tokens = torch.randint(4, tiny_llama.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = tiny_llama.bridge(tokens)
    _, fused = fused_views(tiny_llama, tokens)
    assert (fused - before).abs().max() < 1e-4
    eager = eager_patterns(tiny_llama, tokens)  # hook_pattern fires again after the session
    assert set(eager) == {0, 1}


@pytest.mark.parametrize("attended_keys", [False, True])
def test_streamed_pass_equals_the_eager_one_whatever_rows_its_reader_skips(tiny_llama, attended_keys) -> None:
    tokens = torch.randint(4, tiny_llama.vocab_size, (2, 30), generator=torch.Generator().manual_seed(5))
    eager = eager_patterns(tiny_llama, tokens)
    with torch.no_grad():
        eager_logits = tiny_llama.bridge(tokens)
    read: dict[int, list[tuple[int, torch.Tensor]]] = {}
    memory: set[int] = set()

    def reader(view) -> None:
        assert isinstance(view, StreamedAttention)
        # layer 0: every row block; layer 1: only rows 10.. (rows 0..9 are completed by the pass itself)
        start = 0 if view.layer == 0 else 10
        blocks = []
        for first, rows in view.blocks(start, trim=True):
            memory.add(rows.data_ptr())
            blocks.append((first, rows.clone(), view.attended_rows(rows[0], first, 0),
                           rows[0] @ view.key[0, :, :rows.shape[-1]]))
        read[view.layer] = blocks
        assert view.rows(0, 7).data_ptr() not in memory  # random access gets fresh memory
        keys = torch.tensor([0, 3, 29])
        assert (view.columns(keys) - eager[view.layer][..., keys]).abs().max() < TOLERANCE  # needs every lse

    with torch.no_grad(), fused_attention(tiny_llama.bridge, reader, block_bytes=4 * 2 * 4 * 30 * 7,
                                          streaming=Streaming(attended_keys)):
        logits = tiny_llama.bridge(tokens)
    assert (logits - eager_logits).abs().max() < 1e-4  # the streamed blocks made each layer's output
    assert len(memory) == 1  # every block of the pass, in both layers, was written into one buffer
    for layer, blocks in read.items():
        assert [first for first, *_ in blocks] == ([0, 7, 14, 21, 28] if layer == 0 else [10, 17, 24])
        for first, rows, attended, product in blocks:
            expected = eager[layer][..., first:first + rows.shape[-2], :rows.shape[-1]]
            assert (rows - expected).abs().max() < TOLERANCE
            assert (attended - product).abs().max() < 1e-5  # A K from the output product (or computed)


def test_decoding_step_row_equals_the_last_eager_row(tiny_llama) -> None:
    tokens = torch.randint(4, tiny_llama.vocab_size, (1, 12), generator=torch.Generator().manual_seed(4))
    eager = eager_patterns(tiny_llama, tokens)
    views: dict[int, FusedAttention] = {}
    with torch.no_grad():
        _, cache = tiny_llama.bridge(tokens[:, :-1], return_type="logits_and_cache", use_cache=True)
        with fused_attention(tiny_llama.bridge, lambda view: views.__setitem__(view.layer, view)):
            tiny_llama.bridge(tokens[:, -1:], return_type="logits_and_cache", past_key_values=cache)
    for layer, view in views.items():
        assert (view.n_queries, view.n_keys) == (1, 12)
        assert (view.rows(0, 1)[:, :, 0] - eager[layer][:, :, -1]).abs().max() < TOLERANCE


def test_sliding_window_mask_is_applied(tmp_path) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from mechbench.models.loading import load_model

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64,
                              attn_logit_softcapping=None, final_logit_softcapping=None)
    Gemma3ForCausalLM(config).eval().save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert supports_fused(model)
    tokens = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(5))
    eager = eager_patterns(model, tokens)
    views, _ = fused_views(model, tokens)
    for layer, view in views.items():
        assert (view.pattern() - eager[layer]).abs().max() < TOLERANCE
    local = views[0].pattern()[0, 0]
    assert torch.all(local.tril(-4) == 0) and local[11, 8] > 0  # only the last 4 keys are visible
    assert views[1].pattern()[0, 0, 11, 0] > 0  # the full-attention layer sees the first key


def test_recorder_serves_the_same_views_fused_and_eager(tiny_llama) -> None:
    dataset = TokenDataset(tokens=[torch.arange(4, 20), torch.arange(5, 14)], example_ids=["a", "b"],
                           token_texts=[[], []])
    seen: dict[str, dict[int, torch.Tensor]] = {"fused": {}, "eager": {}}
    for path in ("fused", "eager"):
        def keep(layer, view, batch, path=path):
            assert isinstance(view, FusedAttention if path == "fused" else DenseAttention)
            assert view.query is not None and view.key is not None
            seen[path][layer] = view.pattern()
        recorder = Recorder(tiny_llama, batch_size=2, progress=False)
        assert recorder.uses_fused({ATTENTION: keep}, path) is (path == "fused")
        recorder.run(dataset, {ATTENTION: keep}, attention=path)
    for layer in (0, 1):
        assert (seen["fused"][layer] - seen["eager"][layer]).abs().max() < TOLERANCE


def test_a_pass_that_hooks_nothing_else_runs_the_hugging_face_model_itself(tiny_llama, monkeypatch) -> None:
    calls: list[str] = []
    direct = tiny_llama.run_direct
    monkeypatch.setattr(tiny_llama, "run_direct", lambda *a, **k: calls.append("direct") or direct(*a, **k))
    dataset = TokenDataset(tokens=[torch.arange(4, 20)], example_ids=["a"], token_texts=[[]])
    recorder = Recorder(tiny_llama, batch_size=1, progress=False)
    recorder.run(dataset, {ATTENTION: lambda layer, view, batch: None})
    assert calls == ["direct"]
    recorder.run(dataset, {ATTENTION: lambda layer, view, batch: None, "resid_post": lambda layer, x, batch: None})
    assert calls == ["direct"]  # a residual-stream hook needs the bridge


@pytest.mark.parametrize(("model_fixture", "unembed"), [("tiny_llama", True), ("planted", True), ("tiny_llama", False)])
def test_logits_are_handed_out_in_chunks_equal_to_the_forward_pass(model_fixture, unembed, request,
                                                                   monkeypatch) -> None:
    import mechbench.core.recorder as recorder_module

    model = request.getfixturevalue(model_fixture)
    assert model.unembeds_chunks  # both unembed their final norm's output as the forward pass does
    if not unembed:  # a model that scales its logits after the unembedding: chunks are slices of the logits
        monkeypatch.setattr(model, "_unembeds_chunks", False)
    monkeypatch.setattr(recorder_module, "LOGIT_CHUNK", 5)
    tokens = [torch.arange(4, 17) % model.vocab_size, torch.arange(3, 11) % model.vocab_size]
    dataset = TokenDataset(tokens=tokens, example_ids=["a", "b"], token_texts=[[], []])
    chunks: list[tuple[int, torch.Tensor]] = []
    Recorder(model, batch_size=2, progress=False).run(
        dataset, {"resid_post": lambda layer, x, batch: None}, on_logits=lambda c, first, batch: chunks.append(
            (first, c.clone())))
    assert [first for first, _ in chunks] == [0, 5, 10]
    with torch.no_grad():
        whole = model.bridge(torch.stack([tokens[0], torch.cat([tokens[1], torch.zeros(5, dtype=torch.long)
                                                                  + model.pad_id])]))
    assert (torch.cat([c for _, c in chunks], dim=1) - whole).abs().max() < 1e-4
    later: list[tuple[int, torch.Tensor]] = []  # a reader of positions 7.. only: earlier ones are not handed out
    Recorder(model, batch_size=2, progress=False).run(
        dataset, {"resid_post": lambda layer, x, batch: None}, logits_from=lambda batch: 7,
        on_logits=lambda c, first, batch: later.append((first, c.clone())))
    assert [first for first, _ in later] == [7, 12]
    assert (torch.cat([c for _, c in later], dim=1) - whole[:, 7:]).abs().max() < 1e-4


def test_models_the_fused_path_cannot_drive_fall_back_or_refuse(planted) -> None:
    assert not supports_fused(planted)
    recorder = Recorder(planted, batch_size=1, progress=False)
    assert not recorder.uses_fused({ATTENTION: lambda *a: None}, "auto")
    with pytest.raises(CapabilityError, match=r"does not cover toy-planted.*attention: eager"):
        recorder.uses_fused({ATTENTION: lambda *a: None}, "fused")


def test_fused_refuses_sites_inside_attention(tiny_llama) -> None:
    recorder = Recorder(tiny_llama, batch_size=1, progress=False)
    reducers = {ATTENTION: lambda *a: None, "pattern": lambda *a: None}
    assert not recorder.uses_fused(reducers, "auto")
    with pytest.raises(CapabilityError, match="cannot also record pattern"):
        recorder.uses_fused(reducers, "fused")


@pytest.mark.parametrize("mask_kind", ["none", "blocked keys", "finite biases"])
def test_row_entropies_from_lse_equal_the_entries_own(mask_kind) -> None:
    generator = torch.Generator().manual_seed(6)
    q, k = (torch.randn(2, 3, 12, 8, generator=generator) * 2 for _ in range(2))
    causal = torch.ones(12, 12, dtype=torch.bool).triu(1)
    mask = None
    if mask_kind == "blocked keys":  # a padding mask: 0 or -inf, the causal part included
        mask = torch.zeros(2, 1, 12, 12).masked_fill(causal, float("-inf"))
        mask[1, ..., 9:] = float("-inf")
    elif mask_kind == "finite biases":  # ALiBi-like distance penalties on top of the causal -inf
        distance = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).float()
        mask = (-0.3 * distance).masked_fill(causal, float("-inf")).expand(2, 1, 12, 12)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8) + (mask if mask is not None else torch.zeros(12, 12).masked_fill(
        causal, float("-inf")))
    view = FusedAttention(0, q, k, scores.logsumexp(-1), 1 / math.sqrt(8), mask, mask is None)
    for first, rows in view.blocks(trim=True):
        for batch_row in (0, 1):
            block = rows[batch_row]
            expected = -torch.special.xlogy(block.double(), block.double()).sum(-1)
            torch.testing.assert_close(view.row_entropies(block, first, batch_row), expected, rtol=1e-5, atol=1e-5)
            dense = DenseAttention(0, rows, q, k)
            torch.testing.assert_close(dense.row_entropies(block, first, batch_row), expected, rtol=1e-6, atol=1e-6)
