"""Run a HookedModel from input embeddings: the differentiable entry point for input attribution.

Gradient and perturbation methods (saliency, integrated gradients, occlusion by replacement) need
``f(embeddings)``, not ``f(token ids)``. :func:`run_from_embeddings` runs the bridge on the token
ids as usual and swaps the output of the token-embedding hook (TransformerLens' ``hook_embed``
alias) for the given tensor, so positional embeddings, RoPE, masks and every other hook are those
of the ordinary forward pass. With gradients enabled, ``d logits / d embeddings`` flows back
through that tensor. Learned positional embeddings (``hook_pos_embed``) are added after the swap
and are never attributed or replaced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.errors import CapabilityError

#: TransformerLens alias of the token-embedding output (``embed.hook_out``; ``embed_ln.hook_out`` for post-LN models).
EMBED_HOOK = "hook_embed"


@contextmanager
def frozen_parameters(model: HookedModel) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter (input gradients only, no weight gradients kept), then restore."""
    parameters = list(model.bridge.parameters())
    before = [p.requires_grad for p in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in zip(parameters, before, strict=True):
            parameter.requires_grad_(flag)


def _mask_kwargs(model: HookedModel, attention_mask: Tensor | None) -> dict[str, Any]:
    if attention_mask is None or model.causal:
        return {}
    return {"attention_mask": attention_mask.to(model.device)}


def token_embeddings(model: HookedModel, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The token embeddings ``[batch, pos, d_model]`` the model computes for ``tokens`` (detached)."""
    kept: list[Tensor] = []

    def keep(activation: Tensor, hook: Any) -> None:
        kept.append(activation.detach().clone())

    with torch.no_grad():
        model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[(EMBED_HOOK, keep)],
                                    **_mask_kwargs(model, attention_mask))
    return kept[0]


def run_from_embeddings(model: HookedModel, tokens: Tensor, embeddings: Tensor, attention_mask: Tensor | None = None,
                        hooks: Sequence[tuple[str, Any]] = ()) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of the model with its token embeddings replaced by ``embeddings``.

    ``tokens`` ``[batch, pos]`` fixes everything but the token embeddings (positions, masks);
    ``embeddings`` ``[batch, pos, d_model]`` may require grad. Extra forward ``hooks`` are attached
    as in :meth:`HookedModel.run_with_hooks`. Grad mode is the caller's.
    """
    if embeddings.shape[:2] != tokens.shape:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match tokens {tuple(tokens.shape)}")

    def swap(activation: Tensor, hook: Any) -> Tensor:
        return embeddings.to(activation.dtype)

    return model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[(EMBED_HOOK, swap), *hooks],
                                       **_mask_kwargs(model, attention_mask))


def mean_embedding(model: HookedModel, tokens: Tensor, embeddings: Tensor) -> Tensor:
    """Mean row of the token-embedding matrix ``W_E`` as the hook sees it ``[d_model]`` (the "mean" replacement).

    Some models scale the looked-up rows (Gemma multiplies by ``sqrt(d_model)``), so the scale ``c``
    of ``hook_embed = c W_E[token]`` is fitted on the given ``tokens`` and their ``embeddings``
    (least squares); an embedding that is not a scaled lookup (e.g. post-LayerNorm) is refused.
    """
    table = model.bridge.embed.W_E.detach()
    looked_up = table[tokens.reshape(-1).to(table.device)].to(embeddings.dtype)
    seen = embeddings.reshape(-1, embeddings.shape[-1])
    scale = (looked_up * seen).sum() / (looked_up * looked_up).sum().clamp(min=1e-30)
    if not torch.allclose(scale * looked_up, seen, rtol=1e-4, atol=1e-5 * float(seen.abs().max())):
        raise CapabilityError(f"{model.name}: hook_embed is not a scaled lookup of W_E, so a mean embedding is not "
                              "defined; use the 'zero' or 'pad' replacement")
    return scale * table.mean(0).to(embeddings.dtype)
