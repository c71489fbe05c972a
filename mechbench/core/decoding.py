"""Greedy decoding that keeps, per step, the argmax-attended key of every head (retrieval heads, WAAD/FAI)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from mechbench.core.fused import FusedAttention, use_fused
from mechbench.core.limits import check_context, check_finite
from mechbench.core.model import DecodeSteps, FusedPath, require
from mechbench.core.recorder import AttentionPath
from mechbench.errors import DatasetError


@dataclass(frozen=True)
class Decoding:
    """What a greedy decode keeps: emitted tokens and one argmax key position per head per step."""

    generated: Tensor  # [step] token ids
    argmax_keys: Tensor  # [step, layer, head] key positions
    used_kv_cache: bool


def greedy_decode(model: DecodeSteps, prompt_ids: Tensor, max_new_tokens: int,
                  stop_ids: Collection[int] = (), use_kv_cache: bool = True,
                  fwd_hooks: Sequence[tuple[str, Any]] = (), attention: AttentionPath = "auto") -> Decoding:
    """Greedy decoding that records, per step, the argmax-attended key of the last query of every head.

    As the reference ``decode``: prefill ``prompt_ids[:-1]``, then each step feeds the previous token,
    emits ``argmax logits``, records the argmaxes, and stops after a token in ``stop_ids`` (that step
    still counts) or ``max_new_tokens`` steps. With ``use_kv_cache`` and a bridge that returns a Hugging
    Face cache, each step runs one token; otherwise the whole sequence is re-run each step (same
    result, quadratic cost). Only ``[heads]`` per layer per step is kept in either case.
    ``fwd_hooks`` (e.g. :func:`mechbench.core.interventions.mask_heads_hooks`) are active in the prefill
    and in every decode step.

    ``attention="auto"`` decodes with the fused kernel where the model allows it and no ``fwd_hooks``
    edit attention (:mod:`mechbench.core.fused`): the prefill never builds a pattern, and a step's
    argmax key is ``argmax_j q . k_j`` of its one query row (the softmax keeps the order), so scoring
    costs ``O(L d)`` per head and step on top of a plain KV-cache decode. ``eager`` reads ``hook_pattern``.
    """
    require(model, DecodeSteps, "greedy decoding")
    if prompt_ids.dim() != 1 or prompt_ids.numel() < 2:
        raise DatasetError(f"the prompt needs at least 2 tokens (1-D ids), got shape {tuple(prompt_ids.shape)}")
    check_context(prompt_ids.numel() + max_new_tokens, model.architecture.n_ctx, model.name,
                  f"the prompt has {prompt_ids.numel()} tokens + {max_new_tokens} new tokens",
                  "use a shorter context or fewer new tokens")
    argmax_keys = torch.zeros(max_new_tokens, model.n_layers, model.n_heads, dtype=torch.long)
    step = [0]

    def keep_argmax(pattern: Tensor, hook: Any, layer: int) -> None:
        argmax_keys[step[0], layer] = pattern[0, :, -1, :].argmax(-1).cpu()

    def keep_fused_argmax(view: FusedAttention) -> None:  # the last query row (the prefill's is overwritten)
        last = view.n_queries - 1
        argmax_keys[step[0], view.layer] = view.scores(last, last + 1)[0, :, 0].argmax(-1).cpu()

    fused = use_fused(model, attention, "run with head-masking hooks on hook_pattern" if fwd_hooks else None)
    hooks = [] if fused else [(model.hook_name("pattern", layer),
                               lambda p, hook, layer=layer: keep_argmax(p, hook, layer))
                              for layer in range(model.n_layers)]
    sequence = prompt_ids.to(model.device)
    generated: list[int] = []
    cache = None
    # (use_fused is True only for a model that supports_fused: a FusedPath)
    with torch.no_grad(), (cast(FusedPath, model).fused_attention(keep_fused_argmax) if fused
                           else contextlib.nullcontext()):
        if use_kv_cache and model.supports_kv_cache:
            with model.hooks(fwd_hooks):
                # the prefill's logits are never read: unembed only the last position (HF logits_to_keep)
                cache = model.prefill(sequence[None, :-1])
        token = sequence[-1:]
        # attached once: a per-step run_with_hooks costs more than the decode step itself
        with model.hooks(list(fwd_hooks) + hooks):
            for i in range(max_new_tokens):
                step[0] = i
                if cache is not None:
                    logits, cache = model.decode_step(token[None], cache)
                else:
                    logits = model.forward(sequence[None])
                check_finite(logits[0, -1], f"the logits of decode step {i}", model.name)
                token = logits[0, -1].argmax().view(1)
                generated.append(int(token))
                sequence = torch.cat([sequence, token])
                if generated[-1] in stop_ids:
                    break
    return Decoding(generated=torch.tensor(generated, dtype=torch.long), argmax_keys=argmax_keys[:len(generated)],
                    used_kv_cache=cache is not None)
