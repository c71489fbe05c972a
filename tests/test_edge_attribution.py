"""EAP and EAP-IG edge scores, every edge kind (into heads' q/k/v, into MLPs, into the logits), against an
independent reference: a GPT-2 forward written out here from the Hugging Face weights, in which every
reader (a head's q, k or v input, an MLP's input, the final residual) gets its own copy of the
residual stream. Its autograd gradients give EAP / EAP-IG exactly; patching one reader's copy gives
exact edge patching (``get_scores_exact`` of ``hannamw/EAP-IG``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from mechbench.analyses import circuits as C
from mechbench.errors import CapabilityError
from mechbench.tasks.circuit_tasks import PairTokens

N_LAYERS, N_HEADS, D_MODEL, N_EXAMPLES, LENGTH = 2, 4, 32, 6, 10


def build_tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer GPT-2 (4 heads, MLPs, LayerNorm, learned positions, tied unembedding)."""
    from conftest import build_word_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=D_MODEL, n_layer=N_LAYERS,
                        n_head=N_HEADS, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2LMHeadModel

    from mechbench.models.loading import load_model

    directory = build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))
    return load_model(str(directory)), GPT2LMHeadModel.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def pairs(gpt2):
    generator = torch.Generator().manual_seed(0)
    vocab = gpt2[1].config.vocab_size
    clean = torch.randint(4, vocab, (N_EXAMPLES, LENGTH), generator=generator)
    corrupt = clean.clone()
    # two positions per example replaced: the corruption reaches the heads through q, k and v
    for row in range(N_EXAMPLES):
        where = torch.randperm(LENGTH - 1, generator=generator)[:2]
        corrupt[row, where] = torch.randint(4, vocab, (2,), generator=generator)
    answer, wrong = torch.randint(4, vocab, (2, N_EXAMPLES), generator=generator)
    return PairTokens("random", [str(i) for i in range(N_EXAMPLES)], clean, corrupt, answer, wrong,
                      torch.full((N_EXAMPLES,), LENGTH - 1))


# ---------------------------------------------------------------------------- the reference
def reference_forward(hf, tokens: Tensor, extra: dict[str, Tensor] | None = None,
                      embed: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``(logits, writer outputs, reader inputs)``, labels as mechbench's edge graph names them.

    Each reader's input is a fresh copy of the residual stream plus ``extra[label]`` when given, so a
    gradient w.r.t. it, or a change to it, reaches the logits through that reader alone."""
    extra = extra or {}
    tr = hf.transformer
    d_head = D_MODEL // N_HEADS
    positions = torch.arange(tokens.shape[1])
    writers = {"input": tr.wte(tokens) + tr.wpe(positions) if embed is None else embed}
    readers: dict[str, Tensor] = {}
    resid = writers["input"]

    def reader(label: str, stream: Tensor) -> Tensor:
        readers[label] = stream + extra[label] if label in extra else stream.clone()
        return readers[label]

    causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    for layer, block in enumerate(tr.h):
        weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: [d_model, 3 d_model]
        w_out = block.attn.c_proj.weight.reshape(N_HEADS, d_head, D_MODEL)
        heads_out = []
        for h in range(N_HEADS):
            q, k, v = (block.ln_1(reader(f"L{layer}H{h}.{c}", resid))
                       @ weight[:, i * D_MODEL + h * d_head:i * D_MODEL + (h + 1) * d_head]
                       + bias[i * D_MODEL + h * d_head:i * D_MODEL + (h + 1) * d_head]
                       for i, c in enumerate("qkv"))
            scores = (q @ k.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(~causal, float("-inf"))
            writers[f"L{layer}H{h}"] = scores.softmax(-1) @ v @ w_out[h]
            heads_out.append(writers[f"L{layer}H{h}"])
        resid = resid + sum(heads_out) + block.attn.c_proj.bias
        hidden = block.mlp.c_fc(block.ln_2(reader(f"MLP{layer}", resid)))
        writers[f"MLP{layer}"] = block.mlp.c_proj(F.gelu(hidden, approximate="tanh"))
        resid = resid + writers[f"MLP{layer}"]
    logits = tr.ln_f(reader("logits", resid)) @ tr.wte.weight.T
    return logits, writers, readers


def reference_scores(hf, pairs: PairTokens, up: list[str], down: list[str], alphas: list[float]) -> Tensor:
    """EAP (``alphas = [1]``) or EAP-IG: gradients w.r.t. the reader copies, averaged over the input
    embeddings ``corrupt + alpha (clean - corrupt)``, dotted with the writers' corrupt - clean outputs."""
    metric = C.pair_metric(pairs)
    with torch.no_grad():
        _, clean, _ = reference_forward(hf, pairs.clean)
        _, corrupt, _ = reference_forward(hf, pairs.corrupt)
    grads = {label: torch.zeros(N_EXAMPLES, LENGTH, D_MODEL) for label in down}
    for alpha in alphas:
        embed = (corrupt["input"] + alpha * (clean["input"] - corrupt["input"])).requires_grad_(True)
        logits, _, readers = reference_forward(hf, pairs.clean, embed=embed)
        for label, g in zip(down, torch.autograd.grad(metric(logits).sum(), [readers[d] for d in down]),
                            strict=True):
            grads[label] += g / len(alphas)
    return torch.stack([torch.stack([((corrupt[u] - clean[u]) * grads[d]).sum((1, 2)).mean() for d in down])
                        for u in up]).double()


def exact_edge_patching(hf, pairs: PairTokens, up: list[str], down: list[str], mask: Tensor) -> Tensor:
    """``LD(clean run, reader v fed u's corrupt output) - LD(clean)``, mean over examples, per real edge."""
    metric = C.pair_metric(pairs)
    scores = torch.full((len(up), len(down)), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        clean_logits, clean, _ = reference_forward(hf, pairs.clean)
        _, corrupt, _ = reference_forward(hf, pairs.corrupt)
        base = metric(clean_logits)
        for i, u in enumerate(up):
            for j, d in enumerate(down):
                if mask[i, j]:
                    logits, _, _ = reference_forward(hf, pairs.clean, {d: corrupt[u] - clean[u]})
                    scores[i, j] = float((metric(logits) - base).mean())
    return scores


def test_the_librarys_exact_edge_patching_equals_the_reference(gpt2, pairs):
    """mechbench's hook-level exact edge patching (one reader's input shifted, the residual untouched) against
    the reference's, on every edge kind."""
    model, hf = gpt2
    up, down = C.upstream_labels(model), C.downstream_labels(model)
    mask = C.edge_mask(model)
    ours = C.exact_edge_patching(model, pairs, batch_size=4)
    expected = exact_edge_patching(hf, pairs, up, down, mask)
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-5, rtol=1e-4)
    assert bool(ours[~mask].isnan().all()) and float(expected[mask].abs().max()) > 0.05
    with pytest.raises(CapabilityError, match=r"exact edge patching would take 110 forward passes per batch"):
        C.exact_edge_patching(model, pairs, max_edges=100)


def test_reference_forward_is_the_model(gpt2, pairs):
    _, hf = gpt2
    with torch.no_grad():
        logits, _, _ = reference_forward(hf, pairs.clean)
        torch.testing.assert_close(logits, hf(pairs.clean).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- EAP and EAP-IG
@pytest.mark.parametrize(("method", "steps"), [("eap", 1), ("eap_ig", 5)])
def test_edge_scores_equal_the_reference_on_every_edge_kind(gpt2, pairs, method, steps):
    model, hf = gpt2
    up, down = C.upstream_labels(model), C.downstream_labels(model)
    assert len(up) == 1 + N_LAYERS * (N_HEADS + 1) and len(down) == N_LAYERS * (3 * N_HEADS + 1) + 1
    mask = C.edge_mask(model)
    ours = C.edge_attribution(model, pairs, method, steps=steps)
    alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]
    expected = reference_scores(hf, pairs, up, down, alphas)
    scale = float(expected[mask].abs().max())
    assert scale > 0.05  # the corruption moves the logit difference: the comparison is not of zeros
    for kind, columns in (("heads", [j for j, d in enumerate(down) if "." in d]),
                          ("mlps", [j for j, d in enumerate(down) if d.startswith("MLP")]),
                          ("logits", [down.index("logits")])):
        sub = mask[:, columns]
        assert int(sub.sum()) > 0
        error = float((ours[:, columns][sub] - expected[:, columns][sub]).abs().max())
        assert error < 1e-5 * scale, f"{method} edges into {kind}: max error {error:.3g} (scale {scale:.3g})"
    assert bool(ours[~mask].isnan().all())


@pytest.mark.parametrize(("method", "pearson", "shared_top20"), [("eap", 0.9, 16), ("eap_ig", 0.93, 18)])
def test_edge_scores_track_exact_edge_patching(gpt2, pairs, method, pearson, shared_top20):
    """First order vs exact per-edge patching (measured: EAP r 0.913, 17 of the top 20 shared, edges into
    MLPs r 0.990; EAP-IG with 5 steps r 0.955, 19, 0.973). Scoring an MLP edge with the gradient of the
    residual itself, skip path included (the bug of issue 27), gave r 0.843, 14 and 0.842."""
    model, hf = gpt2
    up, down = C.upstream_labels(model), C.downstream_labels(model)
    mask = C.edge_mask(model)
    exact = exact_edge_patching(hf, pairs, up, down, mask)
    ours = C.edge_attribution(model, pairs, method, steps=5)
    stacked = torch.stack([exact[mask], ours[mask]])
    assert float(torch.corrcoef(stacked)[0, 1]) > pearson
    top = [set(row.abs().topk(20).indices.tolist()) for row in stacked]
    assert len(top[0] & top[1]) >= shared_top20
    into_mlps = mask & torch.tensor([d.startswith("MLP") for d in down])[None, :]
    assert float(torch.corrcoef(torch.stack([exact[into_mlps], ours[into_mlps]]))[0, 1]) > 0.95


def test_exact_edge_patching_refuses_a_kv_head_shared_under_gqa(tiny_llama):
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(4, tiny_llama.vocab_size, (2, 6), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 1 - 4) % (tiny_llama.vocab_size - 4) + 4
    pairs = PairTokens("gqa", ["0", "1"], clean, corrupt, torch.tensor([5, 6]), torch.tensor([7, 8]),
                       torch.full((2,), 5))
    with pytest.raises(CapabilityError, match=r"L0H0\.k reads a KV head shared by 2 query heads \(GQA\)"):
        C.exact_edge_patching(tiny_llama, pairs)
