"""Attention-pattern interventions: edit a layer's post-softmax pattern before it multiplies ``V``.

An edit is a function ``(pattern [batch, head, query, key], batch) -> edited pattern``; the hooks
returned by :func:`pattern_edit_hooks` apply one edit per layer through the TransformerLens
``hook_pattern`` point (the edited pattern is the one the model uses). Analyses build edits from
the pure functions here (ACT calibration, key masks) and score the edited model with
:func:`batch_logits` / :func:`text_nll`. :func:`skip_layers_hooks` removes whole layers (a layer's
output is replaced by its input), for layer-pruning studies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mechbench.core.dataset import Batch, TokenDataset, iter_batches
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_heads
from mechbench.errors import CapabilityError

PatternEdit = Callable[[Tensor, Batch], Tensor]


def pattern_edit_hooks(model: HookedModel, edits: Mapping[int, PatternEdit],
                       current: list[Batch]) -> list[tuple[str, Any]]:
    """Forward hooks replacing layer ``l``'s attention pattern by ``edits[l](pattern, batch)``.

    ``current`` holds the batch being run (set by the caller before each forward pass).
    """
    hooks = []
    for layer, edit in edits.items():
        def hook(pattern: Tensor, hook: Any, edit: PatternEdit = edit) -> Tensor:
            return edit(pattern, current[0])
        hooks.append((model.hook_name("pattern", layer), hook))
    return hooks


def batch_logits(model: HookedModel, dataset: TokenDataset, batch_size: int,
                 edits: Mapping[int, PatternEdit] | None = None,
                 hooks: Sequence[tuple[str, Any]] = ()) -> Iterator[tuple[Batch, Tensor]]:
    """Yield ``(batch, logits [batch, pos, vocab])`` for every batch, with the pattern edits and any
    extra forward ``hooks`` (e.g. :func:`skip_layers_hooks`) applied."""
    current: list[Batch] = []
    hooks = [*pattern_edit_hooks(model, edits or {}, current), *hooks]
    for batch in iter_batches(dataset, batch_size, pad_id=model.pad_id):
        current[:] = [batch]
        yield batch, model.run_with_hooks(batch, hooks)


def text_nll(model: HookedModel, dataset: TokenDataset, batch_size: int = 4,
             edits: Mapping[int, PatternEdit] | None = None, hooks: Sequence[tuple[str, Any]] = ()) -> Tensor:
    """Per-token next-token negative log-likelihood ``[example, position]`` (NaN where no target):
    entry ``[e, t]`` is the loss of predicting token ``t + 1`` from the logits at ``t``."""
    out = torch.full((len(dataset), dataset.max_length), float("nan"), dtype=torch.float64)
    for batch, logits in batch_logits(model, dataset, batch_size, edits, hooks):
        logprobs = logits[:, :-1].double().log_softmax(-1).cpu()
        nll = -logprobs.gather(-1, batch.tokens[:, 1:, None])[..., 0]
        for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            out[index, : length - 1] = nll[row, : length - 1]
    return out


def skip_layers_hooks(model: HookedModel, layers: Collection[int]) -> list[tuple[str, Any]]:
    """Forward hooks that remove ``layers``: each one's output residual stream is replaced by its input,
    as if the block were deleted (ShortGPT-style layer pruning). The block still runs (its output is
    discarded), so this measures quality, not speed."""
    hooks: list[tuple[str, Any]] = []
    for layer in sorted(set(layers)):
        stash: list[Tensor] = []

        def keep(resid: Tensor, hook: Any, stash: list[Tensor] = stash) -> None:
            stash[:] = [resid]

        def restore(resid: Tensor, hook: Any, stash: list[Tensor] = stash) -> Tensor:
            return stash.pop()

        hooks.append((model.hook_name("resid_pre", layer), keep))
        hooks.append((model.hook_name("resid_post", layer), restore))
    return hooks


def calibrate_attention(pattern: Tensor, sinks: Tensor, beta: float) -> Tensor:
    """ACT attention calibration (Yu et al. 2024, ``GATECH-EIC/ACT`` ``atten_process_eval``).

    ``pattern``: ``[..., query, key]`` post-softmax rows; ``sinks``: ``[..., key]`` bool, the sink
    columns ``S`` to shrink. Per query row ``t``::

        freed[t]  = (1 - beta) * sum_{s in S} P[t, s]
        P'[t, s]  = beta * P[t, s]                      (s in S)
        R[t]      = P[t] with the S entries zeroed, normalised to sum 1
        P''[t]    = P'[t] + freed[t] * R[t]

    Rows keep summing to 1 and sink columns become exactly ``beta`` times the original. The
    reference also sets ``P''[0, 0] = 1``; for a causal pattern that entry is already 1 (row 0 sees
    only key 0, which is never in ``S`` after the first sink is dropped). A row whose mass lies
    entirely on sinks has nowhere to move it and is left unchanged.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    columns = sinks[..., None, :].to(pattern.dtype)
    sink_mass = (pattern * columns).sum(-1, keepdim=True)
    rest = pattern * (1 - columns)
    rest_mass = rest.sum(-1, keepdim=True)
    redistributed = rest / rest_mass.clamp(min=torch.finfo(pattern.dtype).tiny)
    calibrated = pattern - (1 - beta) * pattern * columns + (1 - beta) * sink_mass * redistributed
    return torch.where(rest_mass > 0, calibrated, pattern)


def renormalise_to_keys(pattern: Tensor, keep: Tensor) -> Tensor:
    """Restrict attention to the keys in ``keep`` (``[query, key]`` or broadcastable bool).

    Renormalising the post-softmax row over the kept keys equals a softmax over the kept keys only
    (``exp(a_s) / sum_{kept} exp(a_s')``), i.e. the same as evicting the other keys from the cache.
    """
    kept = pattern * keep.to(pattern.dtype)
    return kept / kept.sum(-1, keepdim=True).clamp(min=torch.finfo(pattern.dtype).tiny)


def start_recent_keys(length: int, start_size: int, recent_size: int) -> Tensor:
    """``[query, key]`` bool mask of StreamingLLM's ``StartRecentKVCache`` (Xiao et al. 2023).

    Query ``t`` sees key ``s <= t`` when ``s < start_size`` (the attention-sink tokens) or
    ``t - s < recent_size`` (the recent window, which includes ``t`` itself).
    """
    if recent_size < 1:
        raise ValueError(f"recent_size must be at least 1, got {recent_size}")
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    return (key <= query) & ((key < start_size) | (query - key < recent_size))


def uniform_attention(pattern: Tensor, heads: Sequence[int], causal: bool = True) -> Tensor:
    """Replace the rows of ``heads`` by uniform attention over the keys each query can see.

    This is head masking as in Wu et al. 2024 (``nightdessert/Retrieval_Head``
    ``needle_in_haystack_with_mask.py``): a zero query (or zeroed pre-softmax scores) makes every
    visible key score the same. ``pattern`` is ``[batch, head, query, key]``; with ``causal`` the ``q``
    queries are the last ``q`` of ``k`` positions (a prefill has ``q == k``, a cached decode step
    ``q == 1``) and query ``i`` sees keys ``0 .. k - q + i``; without padding on the left.
    """
    n_query, n_key = pattern.shape[-2:]
    if causal:
        visible = torch.arange(n_key, device=pattern.device)[None, :] <= (
            torch.arange(n_query, device=pattern.device)[:, None] + n_key - n_query)
    else:
        visible = torch.ones(n_query, n_key, dtype=torch.bool, device=pattern.device)
    uniform = visible.to(pattern.dtype) / visible.sum(-1, keepdim=True).to(pattern.dtype)
    edited = pattern.clone()
    edited[:, list(heads)] = uniform
    return edited


def mask_heads_hooks(model: HookedModel, heads: Collection[tuple[int, int]]) -> list[tuple[str, Any]]:
    """Forward hooks that give every ``(layer, head)`` in ``heads`` uniform attention (:func:`uniform_attention`)."""
    check_heads("masked heads", sorted(heads), heads, model, error=CapabilityError)
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(heads):
        by_layer.setdefault(layer, []).append(head)
    causal = model.architecture.causal

    def hook_for(layer_heads: list[int]) -> Callable[[Tensor, Any], Tensor]:
        return lambda pattern, hook: uniform_attention(pattern, layer_heads, causal)

    return [(model.hook_name("pattern", layer), hook_for(layer_heads)) for layer, layer_heads in by_layer.items()]
