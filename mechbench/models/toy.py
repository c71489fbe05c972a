"""Toy models whose heads are known, the ground truth for mechbench's tests.

``toy-planted``: two attention-only layers with hand-set weights, no LayerNorm. The residual
stream has four one-hot blocks: current token (``V`` dims), previous token (``V``), copied
output (``V``) and position (``n_ctx``). Heads (layer.head):

* ``0.0`` BOS head: constant query, key = "is BOS" → attends to position 0 only.
* ``0.1`` previous-token head: query at ``t`` matches key position ``t-1``; writes the previous
  token into the previous-token block.
* ``1.0`` induction head: query = current token, key = previous-token block → attends to the
  token after an earlier occurrence of the current token; writes that token into the output
  block, which the unembedding reads, so the model predicts repeated sequences.
* ``1.1`` self head: attends to its own position.
* ``1.2`` delimiter head: constant query; keys score ``GAP`` on the delimiter token
  (``PLANTED_DELIMITER``) and ``GAP - 3`` on BOS, so it rests on BOS until a delimiter appears and
  then puts ~95 % of its mass on the delimiter: a planted *hidden sink* (ACT) after position 0.
  No output.
* ``0.2``, ``0.3``, ``1.3``: all-zero weights → uniform (diffuse) attention, no output.

``toy-induction``: the 2-layer attention-only recipe of ``shared/reference/models.md`` (d_model
128, 4 heads, LayerNorm, learned positions) trained on BOS + a random block tiled to 64 tokens;
its trained weights ship with the package (0.8 MB) and :func:`train_induction_model` rebuilds
them (``python -m mechbench.models.toy``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel

PLANTED_VOCAB = 17
PLANTED_CTX = 64
#: Token id the delimiter head (1.2) sinks onto; the other planted heads treat it as an ordinary token.
PLANTED_DELIMITER = 16
#: Pre-softmax logit gap of planted matches (softmax weight of a match ≈ 1 - n·e^-GAP).
PLANTED_GAP = 30.0
PLANTED_HEADS = {"bos": (0, 0), "previous_token": (0, 1), "induction": (1, 0), "self": (1, 1), "delimiter": (1, 2)}
#: Heads with all-zero weights: uniform attention over the visible prefix.
PLANTED_UNIFORM_HEADS = ((0, 2), (0, 3), (1, 3))

INDUCTION_VOCAB = 256
INDUCTION_CTX = 64
INDUCTION_WEIGHTS = "toy_induction.safetensors"


def _native_bridge(**config: Any) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    # TransformerLens attaches boot_native with setattr (model_bridge.sources.native), out of mypy's sight
    return TransformerBridge.boot_native(TransformerBridgeConfig(**config), device="cpu")  # type: ignore[attr-defined]


def planted_bridge() -> Any:
    """Build the hand-set ``toy-planted`` TransformerBridge (see module docstring)."""
    vocab, ctx, d_head, n_heads = PLANTED_VOCAB, PLANTED_CTX, PLANTED_CTX, 4  # d_head >= ctx: position-indexed q/k
    tok, prev, out, pos = 0, vocab, 2 * vocab, 3 * vocab  # offsets of the residual blocks
    d_model = 3 * vocab + ctx
    bridge = _native_bridge(n_layers=2, d_model=d_model, d_head=d_head, n_heads=n_heads, n_ctx=ctx, d_vocab=vocab,
                            act_fn="relu", normalization_type=None, attn_only=True,
                            positional_embedding_type="standard")
    scale = PLANTED_GAP * d_head**0.5  # undo TL's 1/sqrt(d_head) attention scaling
    state = {k: torch.zeros_like(v) for k, v in bridge.state_dict().items()}
    state["embed.weight"][:, tok:tok + vocab] = torch.eye(vocab)
    state["pos_embed.weight"][:, pos:pos + ctx] = torch.eye(ctx)
    state["unembed.weight"][:, out:out + vocab] = torch.eye(vocab)

    def head_rows(layer: int, head: int, kind: str) -> Tensor:
        return state[f"blocks.{layer}.attn.{kind}.weight"][head * d_head:(head + 1) * d_head]

    # 0.0 BOS head: q = constant (bias), k = [token is BOS].
    state["blocks.0.attn.q.bias"][0 * d_head] = scale
    head_rows(0, 0, "k")[0, tok + 0] = 1.0
    # 0.1 previous-token head: q_t = e_{t-1}, k_s = e_s over position dims; copies the token to `prev`.
    for t in range(1, ctx):
        head_rows(0, 1, "q")[t - 1, pos + t] = scale
    for s in range(ctx):
        head_rows(0, 1, "k")[s, pos + s] = 1.0
    head_rows(0, 1, "v")[:vocab, tok:tok + vocab] = torch.eye(vocab)
    state["blocks.0.attn.o.weight"][prev:prev + vocab, d_head:d_head + vocab] = torch.eye(vocab)
    # 1.0 induction head: q = current token, k = previous token; copies the attended token to `out`.
    head_rows(1, 0, "q")[:vocab, tok:tok + vocab] = scale * torch.eye(vocab)
    head_rows(1, 0, "k")[:vocab, prev:prev + vocab] = torch.eye(vocab)
    head_rows(1, 0, "v")[:vocab, tok:tok + vocab] = torch.eye(vocab)
    state["blocks.1.attn.o.weight"][out:out + vocab, 0:vocab] = torch.eye(vocab)
    # 1.1 self head: q_t = e_t, k_s = e_s over position dims; no output.
    head_rows(1, 1, "q")[:ctx, pos:pos + ctx] = scale * torch.eye(ctx)
    head_rows(1, 1, "k")[:ctx, pos:pos + ctx] = torch.eye(ctx)
    # 1.2 delimiter head: q = constant (bias), k = [delimiter] + (1 - 3/GAP) [BOS]; no output.
    state["blocks.1.attn.q.bias"][2 * d_head] = scale
    head_rows(1, 2, "k")[0, tok + PLANTED_DELIMITER] = 1.0
    head_rows(1, 2, "k")[0, tok + 0] = 1.0 - 3.0 / PLANTED_GAP
    bridge.load_state_dict(state)
    return bridge


def induction_config() -> dict[str, Any]:
    """Architecture of ``toy-induction`` (models.md recipe F)."""
    return dict(n_layers=2, d_model=128, d_head=32, n_heads=4, n_ctx=INDUCTION_CTX, d_vocab=INDUCTION_VOCAB,
                act_fn="gelu", normalization_type="LN", attn_only=True, positional_embedding_type="standard")


def repeat_task_batch(batch_size: int, generator: torch.Generator) -> Tensor:
    """BOS (0) + a random block of length 4..16 over tokens 1..255, tiled to the context length."""
    tokens = torch.zeros(batch_size, INDUCTION_CTX, dtype=torch.long)
    for row in range(batch_size):
        length = int(torch.randint(4, 17, (), generator=generator))
        block = torch.randint(1, INDUCTION_VOCAB, (length,), generator=generator)
        tokens[row, 1:] = block.repeat(INDUCTION_CTX // length + 1)[: INDUCTION_CTX - 1]
    return tokens


def train_induction_model(seed: int = 0, max_steps: int = 1500, log_every: int = 100) -> tuple[Any, dict[str, Any]]:
    """Train ``toy-induction`` until it has induction heads; returns (bridge, training record).

    AdamW (lr 1e-3, weight decay 0.01), batch 32; stops once held-out repeated-token loss < 0.2 and
    the best layer-1 induction score > 0.6 (checked every ``log_every`` steps).
    """
    from mechbench.analyses.head_roles import induction_scores
    from mechbench.models.loading import wrap_bridge
    from mechbench.tasks.repeated import repeated_random_tokens

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    bridge = _native_bridge(**induction_config(), seed=seed)
    optimiser = torch.optim.AdamW(bridge.parameters(), lr=1e-3, weight_decay=0.01)
    record: dict[str, Any] = {"seed": seed, "log": []}
    held_out = repeated_random_tokens(16, 12, INDUCTION_VOCAB, seed=seed + 1, bos=0)
    for step in range(1, max_steps + 1):
        tokens = repeat_task_batch(32, generator)
        logits = bridge(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, INDUCTION_VOCAB), tokens[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % log_every == 0:
            bridge.eval()
            model = wrap_bridge(bridge, "toy-induction")
            with torch.no_grad():
                rep_logits = bridge(held_out)
            half = held_out.shape[1] // 2 + 1
            rep_loss = torch.nn.functional.cross_entropy(
                rep_logits[:, half:-1].reshape(-1, INDUCTION_VOCAB), held_out[:, half + 1:].reshape(-1)).item()
            best = float(induction_scores(model, held_out, block_length=12)[1].max())
            record["log"].append({"step": step, "train_loss": loss.item(), "repeat_loss": rep_loss,
                                  "best_induction_score": best})
            bridge.train()
            if rep_loss < 0.2 and best > 0.6:
                break
    bridge.eval()
    record["steps"] = step
    return bridge, record


def load_toy(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> HookedModel:
    """Build a registered toy model (``toy-planted`` or ``toy-induction``)."""
    from safetensors.torch import load_file

    from mechbench.models.loading import wrap_bridge

    if name == "toy-planted":
        bridge = planted_bridge()
    else:
        bridge = _native_bridge(**induction_config())
        weights = resources.files("mechbench.data").joinpath(INDUCTION_WEIGHTS)
        with resources.as_file(weights) as path:
            bridge.load_state_dict(load_file(str(path)))
    if device != "cpu" or dtype != torch.float32:
        bridge = bridge.to(device=device, dtype=dtype)
    return wrap_bridge(bridge, name, source="mechbench")


def main() -> None:
    """Retrain toy-induction and write its weights and training record into the package data."""
    from safetensors.torch import save_file

    bridge, record = train_induction_model()
    data = Path(__file__).resolve().parent.parent / "data"
    save_file({k: v.contiguous() for k, v in bridge.state_dict().items()}, str(data / INDUCTION_WEIGHTS))
    (data / "toy_induction.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record["log"][-1]))


if __name__ == "__main__":
    main()
