"""Recorder: run a dataset through a HookedModel and reduce each layer's tensor as soon as it exists.

An analysis asks for sites (``"pattern"``, ``"rot_q"``, ...) and gives a reducer per site; the
Recorder attaches hooks for exactly those sites, calls ``reducer(layer, tensor, batch)`` inside
the hook, and returns nothing to the model, so the tensor is freed when the layer finishes.
Peak memory is therefore one layer's activations, not the ``layers x heads x L x L`` cache.

The site ``"attention"`` hands a reducer an :class:`~mechbench.core.fused.AttentionView` per layer
instead of a tensor: by default (``attention="auto"``) from the fused kernel, which rebuilds exact
pattern rows from ``q``, ``k`` and the softmax normaliser block by block, so memory stays linear in
the context; on models the fused path cannot drive, or with ``attention="eager"``, from the eager
``hook_pattern`` (plus the layer's queries and keys). A reducer with a ``streaming`` attribute (a
:class:`~mechbench.core.fused.Streaming`: it reads every row) gets a
:class:`~mechbench.core.fused.StreamedAttention` instead, whose row blocks also make the layer's output.
The state of the fused passes is the Recorder's own :class:`~mechbench.core.fused.FusedSession`.

For short inputs :meth:`Recorder.cache` returns the full tensors, guarded by a memory estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.core.dataset import Batch, TokenDataset, iter_batches
from mechbench.core.fused import (
    AttentionPath,
    AttentionView,
    DenseAttention,
    FusedAttention,
    FusedSession,
    use_fused,
)
from mechbench.core.hooked import FINAL_NORM_HOOK, HookedModel
from mechbench.core.limits import check_finite
from mechbench.core.model import HookSites, require
from mechbench.errors import CapabilityError

__all__ = ["ATTENTION", "AttentionPath", "Batch", "Recorder", "Reducer"]

#: The site whose reducer receives an AttentionView per layer (fused or eager, see the module docstring).
ATTENTION = "attention"
#: Sites computed inside the attention bridge: the fused path bypasses them.
INSIDE_ATTENTION = frozenset({"pattern", "attn_scores", "q", "k", "v", "z", "rot_q", "rot_k"})

#: Sites that legitimately hold -inf (the causal mask before the softmax): not checked for finiteness.
MASKED_SITES = frozenset({"attn_scores"})
#: Positions whose logits a pass hands to ``on_logits`` at once (a ``[batch, 128, vocab]`` chunk, not ``L x vocab``).
LOGIT_CHUNK = 128
#: Default ceiling for :meth:`Recorder.cache` (bytes); above it the user must reduce or opt in.
DEFAULT_CACHE_LIMIT = 4 * 1024**3


class Reducer(Protocol):
    """Receives one layer's head-major tensor for one batch and keeps only what its metric needs."""

    def __call__(self, layer: int, activation: Tensor, batch: Batch) -> None: ...


class ViewReducer(Protocol):
    """Receives one layer's :class:`AttentionView` for one batch."""

    def __call__(self, layer: int, view: AttentionView, batch: Batch) -> None: ...


class Recorder:
    """Streams batches of a dataset through a model, handing per-layer tensors to reducers."""

    def __init__(self, model: HookedModel, batch_size: int = 8, progress: bool = True) -> None:
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        #: the state of this Recorder's fused passes (one at a time; see :class:`~mechbench.core.fused.FusedSession`)
        self.fused_session = FusedSession()

    def _hooks(self, reducers: Mapping[str, Reducer], layers: Sequence[int],
               current: list[Batch]) -> list[tuple[str, Any]]:
        hooks = []
        for site, reducer in reducers.items():
            for layer in layers:
                name = self.model.hook_name(site, layer)

                def hook(activation: Tensor, hook: Any, site: str = site, layer: int = layer,
                         reducer: Reducer = reducer, name: str = name) -> None:
                    if site not in MASKED_SITES:
                        check_finite(activation, f"{name} (layer {layer})", self.model.name)
                    reducer(layer, self.model.head_major(site, activation.detach()), current[0])
                hooks.append((name, hook))
        return hooks

    def _eager_view_hooks(self, reducer: ViewReducer, layers: Sequence[int],
                          current: list[Batch]) -> list[tuple[str, Any]]:
        """Hooks that assemble a DenseAttention per layer from ``hook_pattern`` and the layer's queries/keys."""
        query_site, key_site = ("rot_q", "rot_k") if self.model.architecture.uses_rope else ("q", "k")
        held: dict[str, Tensor] = {}
        hooks: list[tuple[str, Any]] = []
        for layer in layers:
            def keep(activation: Tensor, hook: Any, site: str = "") -> None:
                held[site] = self.model.head_major(site, activation.detach())

            def pattern(activation: Tensor, hook: Any, layer: int = layer) -> None:
                check_finite(activation, f"{hook.name} (layer {layer})", self.model.name)
                reducer(layer, DenseAttention(layer, activation.detach(), held.pop(query_site, None),
                                              held.pop(key_site, None)), current[0])
            hooks += [(self.model.hook_name(query_site, layer), lambda a, hook, s=query_site: keep(a, hook, s)),
                      (self.model.hook_name(key_site, layer), lambda a, hook, s=key_site: keep(a, hook, s)),
                      (self.model.hook_name("pattern", layer), pattern)]
        return hooks

    def uses_fused(self, reducers: Mapping[str, Any], attention: AttentionPath = "auto") -> bool:
        """Whether :meth:`run` serves the ``attention`` site from the fused kernel for these reducers."""
        if ATTENTION not in reducers:
            return False
        inside = sorted(INSIDE_ATTENTION & set(reducers))
        conflict = (f"also record {', '.join(inside)} (sites inside the attention the fused kernel replaces)"
                    if inside else None)
        return use_fused(self.model, attention, conflict)

    def run(self, dataset: TokenDataset, reducers: Mapping[str, Any], layers: Sequence[int] | None = None,
            description: str = "recording", on_logits: Callable[[Tensor, int, Batch], None] | None = None,
            attention: AttentionPath = "auto", logits_from: Callable[[Batch], int] | None = None) -> None:
        """Run every example once; each reducer sees every requested layer of every batch.

        ``reducers`` maps a site to a :class:`Reducer` (a tensor per layer), or ``"attention"`` to a
        :class:`ViewReducer` (an :class:`AttentionView` per layer, served as ``attention`` says).
        ``on_logits(logits [batch, n, vocab], first, batch)``, when given, receives each batch's logits of
        the same forward pass (e.g. next-token entropies), so no second pass is needed, in chunks of
        ``LOGIT_CHUNK`` positions from position ``first``: where the model allows, each chunk is unembedded from
        the final norm's output when it is handed out, so the ``L x vocab`` logits never exist at once.
        ``logits_from(batch)``: the first position whose logits ``on_logits`` needs (earlier ones are not
        unembedded).
        """
        if not reducers:
            raise CapabilityError("the Recorder needs at least one (site, reducer) pair")
        require(self.model, HookSites, "recording activations")
        layers = list(range(self.model.n_layers)) if layers is None else list(layers)
        current: list[Batch] = []
        fused = self.uses_fused(reducers, attention)
        view_reducer = reducers.get(ATTENTION)
        hooks = self._hooks({site: r for site, r in reducers.items() if site != ATTENTION}, layers, current)
        final: list[Tensor] = []
        chunked = on_logits is not None and self.model.unembeds_chunks
        if chunked:
            hooks.append((FINAL_NORM_HOOK, lambda normed, hook: final.append(normed.detach())))
        if view_reducer is not None and not fused:
            hooks += self._eager_view_hooks(view_reducer, layers, current)
        wanted = set(layers)
        # a reducer that reads every row of every layer makes the fused pass compute each row block once
        streaming = getattr(view_reducer, "streaming", None) if wanted == set(range(self.model.n_layers)) else None

        def consume(view: FusedAttention) -> None:
            if view.layer in wanted and view_reducer is not None:  # (the fused path implies an attention reducer)
                view_reducer(view.layer, view, current[0])
                check_finite(view.logsumexp, f"the attention normaliser of layer {view.layer}", self.model.name)

        n_batches = -(-len(dataset) // self.batch_size)
        batches = iter_batches(dataset, self.batch_size, pad_id=self.model.pad_id)
        try:
            for batch in tqdm(batches, total=n_batches, desc=description, disable=not self.progress,
                              unit="batch", leave=False):
                current[:] = [batch]
                last_only = on_logits is None or chunked
                if fused:
                    with self.model.fused_attention(consume, streaming=streaming, session=self.fused_session):
                        logits = (self.model.run_direct(batch, last_logits_only=True) if not hooks and last_only
                                  else self.model.run_with_hooks(batch, hooks, last_logits_only=last_only))
                else:
                    logits = self.model.run_with_hooks(batch, hooks, last_logits_only=last_only)
                check_finite(logits, "the logits", self.model.name)
                if on_logits is not None:
                    start = 0 if logits_from is None else max(0, logits_from(batch))
                    self._hand_out_logits(on_logits, final.pop() if chunked else logits, chunked, batch, start)
        finally:
            current.clear()  # tensors are freed by reference counting; a gc.collect() here cost seconds per run
            final.clear()

    def _hand_out_logits(self, on_logits: Callable[[Tensor, int, Batch], None], source: Tensor, unembed: bool,
                         batch: Batch, start: int = 0) -> None:
        """``on_logits`` per chunk of positions from ``start``: slices of the logits, or unembedded final-norm rows
        (``unembed``; each chunk checked, as a half-precision unembedding can overflow)."""
        for first in range(start, source.shape[1], LOGIT_CHUNK):
            chunk = source[:, first:first + LOGIT_CHUNK]
            if unembed:
                chunk = self.model.unembed(chunk)
                check_finite(chunk, "the logits", self.model.name)
            on_logits(chunk, first, batch)

    def cache(self, dataset: TokenDataset, sites: Sequence[str], layers: Sequence[int] | None = None,
              max_bytes: int = DEFAULT_CACHE_LIMIT) -> dict[str, Tensor]:
        """Full head-major tensors ``{hook name: [example, ...]}`` for short inputs (right-padded, pads zeroed).

        Refuses, before running anything, when the estimated size exceeds ``max_bytes``: use a
        reducer instead, or raise ``max_bytes`` knowingly.
        """
        layers = list(range(self.model.n_layers)) if layers is None else list(layers)
        estimate = self.estimate_bytes(dataset, sites, layers)
        if estimate > max_bytes:
            raise CapabilityError(f"a full cache of {sites} for {len(dataset)} examples would take about "
                                  f"{estimate / 1024**3:.1f} GiB (limit {max_bytes / 1024**3:.1f} GiB); record with "
                                  "a reducer, use fewer/shorter examples, or pass max_bytes")
        length = dataset.max_length
        store: dict[str, Tensor] = {}

        def keep(site: str) -> Reducer:
            def reducer(layer: int, activation: Tensor, batch: Batch) -> None:
                name = self.model.hook_name(site, layer)
                if name not in store:
                    shape = (len(dataset), *activation.shape[1:])
                    if site in ("pattern", "attn_scores"):
                        shape = (len(dataset), activation.shape[1], length, length)
                    elif site in ("q", "k", "v", "z", "rot_q", "rot_k"):
                        shape = (len(dataset), activation.shape[1], length, activation.shape[-1])
                    else:
                        shape = (len(dataset), length, activation.shape[-1])
                    store[name] = torch.zeros(shape, dtype=activation.dtype)
                for row, (index, n) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
                    if site in ("pattern", "attn_scores"):
                        store[name][index, :, :n, :n] = activation[row, :, :n, :n].cpu()
                    elif site in ("q", "k", "v", "z", "rot_q", "rot_k"):
                        store[name][index, :, :n] = activation[row, :, :n].cpu()
                    else:
                        store[name][index, :n] = activation[row, :n].cpu()
            return reducer

        self.run(dataset, {site: keep(site) for site in sites}, layers, description="caching")
        return store

    def estimate_bytes(self, dataset: TokenDataset, sites: Sequence[str], layers: Sequence[int]) -> int:
        """Size in bytes of a full cache of ``sites`` over ``layers`` for ``dataset`` (upper bound)."""
        arch = self.model.architecture
        n, length = len(dataset), dataset.max_length
        per_layer = {"pattern": arch.n_heads * length * length, "attn_scores": arch.n_heads * length * length}
        per_head_site = arch.n_heads * length * arch.d_head
        elements = sum(per_layer.get(site, per_head_site if site in ("q", "k", "v", "z", "rot_q", "rot_k")
                                     else length * arch.d_model) for site in sites)
        itemsize = self.model.dtype.itemsize
        return itemsize * n * len(layers) * elements
