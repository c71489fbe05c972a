"""HookedModel: one interface to per-head activations of any model mechbench can load through TransformerLens.

It wraps a TransformerLens ``TransformerBridge`` (TL 4.x) and adds what analyses need and the
bridge leaves implicit: architecture facts (layers, query heads, KV heads, RoPE, causal or
bidirectional, cross-attention), a single site vocabulary (TL hook names), head-major per-head
tensors with GQA KV heads repeated to query heads (head index = query-head index, as in the
papers' reference code), per-head weights, the unembedding, decode steps, the fused attention path,
and (from :class:`~mechbench.core.model.ModelBase`) tokenisation with explicit BOS handling and a
weight fingerprint. The capabilities are the protocols of :mod:`mechbench.core.model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from mechbench.core.dataset import Batch
from mechbench.core.fused import DEFAULT_BLOCK_BYTES, FusedSession, LayerConsumer, Streaming
from mechbench.core.limits import check_layers
from mechbench.core.model import Architecture as Architecture
from mechbench.core.model import HeadMatrix, ModelBase
from mechbench.core.model import Hook as Hook
from mechbench.errors import CapabilityError

#: Hook on the final norm's output: the residual stream the unembedding reads, every position.
FINAL_NORM_HOOK = "ln_final.hook_out"
#: Short site names -> TransformerLens hook suffix inside ``blocks.{layer}``.
SITES: dict[str, str] = {
    "pattern": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
#: Sites whose tensors are per head ``[batch, pos, head, d_head]`` in TL and are returned head-major.
PER_HEAD_SITES = ("q", "k", "v", "z", "rot_q", "rot_k")
#: Per-head sites that carry KV heads (repeated to query heads under GQA).
KV_SITES = ("k", "v", "rot_k")


class HookedModel(ModelBase):
    """A loaded model with uniform per-head access. Build it with :func:`mechbench.load_model`.

    It has every text capability of :mod:`mechbench.core.model` (hook sites, head weights, the unembedding,
    decode steps, the fused path). ``bridge`` is the wrapped TransformerBridge, for ``mechbench.core`` and
    ``mechbench.models`` only (``tests/test_layering.py``).
    """

    def __init__(self, bridge: Any, name: str, architecture: Architecture, tokenizer: Any | None = None,
                 source: str | None = None) -> None:
        super().__init__(bridge, name, architecture, tokenizer=tokenizer, source=source)
        self.bridge = bridge
        #: whether the fused attention path serves this model (None: not checked yet; see core.fused)
        self.fused_support: bool | None = None
        self._unembeds_chunks: bool | None = None

    # ------------------------------------------------------------------ facts
    def __repr__(self) -> str:
        a = self.architecture
        return (f"HookedModel({self.name!r}: {a.n_layers} layers x {a.n_heads} heads, {a.n_kv_heads} KV heads, "
                f"{a.positional} positions, {'causal' if a.causal else 'bidirectional'})")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the embedding accepts (``0..vocab_size-1``)."""
        return int(self.bridge.cfg.d_vocab)

    # ------------------------------------------------------------------ sites
    def has_hook(self, name: str) -> bool:
        """Whether the model exposes a hook point of that (TransformerLens) name."""
        return name in self.bridge.hook_dict

    def hook_name(self, site: str, layer: int) -> str:
        """The TransformerLens hook name of ``site`` at ``layer`` (e.g. ``blocks.3.attn.hook_pattern``)."""
        if site not in SITES:
            raise CapabilityError(f"unknown site {site!r}; one of: {', '.join(SITES)}")
        if site in ("rot_q", "rot_k") and not self.architecture.uses_rope:
            raise CapabilityError(f"site {site!r} needs a RoPE model; {self.name} uses "
                                  f"{self.architecture.positional} positions (use 'q'/'k')")
        name = f"blocks.{layer}.{SITES[site]}"
        check_layers("hook", name, [layer], self.n_layers, self.name, error=CapabilityError)
        return name

    def head_major(self, site: str, activation: Tensor) -> Tensor:
        """Per-head tensors as ``[batch, head, pos, d_head]`` with KV heads repeated to query heads.

        The pattern and attention scores are already ``[batch, head, query, key]`` and pass through.
        """
        if site not in PER_HEAD_SITES:
            return activation
        per_head = activation.transpose(1, 2)
        if site in KV_SITES and per_head.shape[1] != self.n_heads:
            per_head = per_head.repeat_interleave(self.n_heads // per_head.shape[1], dim=1)
        return per_head

    def run_direct(self, batch: Batch, last_logits_only: bool = False) -> Tensor:
        """The forward pass of the wrapped Hugging Face model itself (no bridge hooks can fire; the bridge's own
        wrapping costs about 5 % of a 2k-token pass): for passes that hook nothing, e.g. fused-attention readers.
        :func:`mechbench.core.fused.supports_fused` checks that it gives the bridge's logits."""
        with torch.no_grad():
            return self.bridge.original_model(input_ids=batch.tokens.to(self.device),
                                              **self._forward_kwargs(batch, last_logits_only)).logits

    @property
    def unembeds_chunks(self) -> bool:
        """Whether :meth:`unembed` of the final normed residual stream gives the forward pass's logits (checked
        once on a short input: models that scale or cap logits outside the unembedding do not)."""
        if self._unembeds_chunks is None and FINAL_NORM_HOOK not in getattr(self.bridge, "hook_dict", {}):
            self._unembeds_chunks = False
        if self._unembeds_chunks is None:
            tokens = torch.tensor([[1, 2, 3]], device=self.device)
            kept: list[Tensor] = []
            with torch.no_grad():
                logits = self.bridge.run_with_hooks(tokens, fwd_hooks=[(FINAL_NORM_HOOK,
                                                                        lambda x, hook: kept.append(x))])
                scale = float(logits.abs().max().clamp(min=1.0))
                difference = float((self.unembed(kept[0]) - logits).abs().max()) if kept else float("inf")
                self._unembeds_chunks = difference <= 1e-5 * scale
        return self._unembeds_chunks

    def unembed(self, normed: Tensor) -> Tensor:
        """Logits ``[batch, n, vocab]`` of final normed residual-stream rows ``[batch, n, d_model]``."""
        with torch.no_grad():
            return self.bridge.unembed(normed)

    def run_with_hooks(self, batch: Batch, hooks: Sequence[tuple[str, Hook]], last_logits_only: bool = False) -> Tensor:
        """One forward pass over a batch with ``(hook name, fn)`` forward hooks attached; returns logits.

        ``last_logits_only`` unembeds only the last position (``[batch, 1, vocab]``; Hugging Face's
        ``logits_to_keep``): for passes that read activations, not predictions, it saves the
        ``L x vocab`` logits (400 MB at 2k tokens for a 49k vocabulary) and their matmul.
        """
        with torch.no_grad():
            return self.bridge.run_with_hooks(batch.tokens.to(self.device), fwd_hooks=list(hooks),
                                              **self._forward_kwargs(batch, last_logits_only))

    def _forward_kwargs(self, batch: Batch, last_logits_only: bool) -> dict[str, Any]:
        """Keyword arguments of a forward pass over ``batch``: ``logits_to_keep`` and a bidirectional model's
        padding mask (a causal model never lets a real query see the right padding)."""
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if last_logits_only and self.supports_logits_to_keep else {}
        if not self.causal and batch.is_ragged:
            kwargs["attention_mask"] = batch.attention_mask.to(self.device)
        return kwargs

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits of a plain forward pass of ``tokens`` ``[batch, pos]`` through the bridge (hooks attached with
        :meth:`hooks` fire); grad mode is the caller's."""
        return self.bridge(tokens.to(self.device))

    @property
    def final_norm_hook(self) -> str | None:
        """The hook on the final norm's output (the rows :meth:`unembed` reads), None where the model has none."""
        return FINAL_NORM_HOOK if self.has_hook(FINAL_NORM_HOOK) else None

    # ------------------------------------------------------------------ weights
    def head_weight(self, layer: int, matrix: HeadMatrix) -> Tensor:
        """``W_Q``/``W_K``/``W_V`` (``[head, d_model, d_head]``; ``W_K``/``W_V`` may have one row per KV head) or
        ``W_O`` (``[head, d_head, d_model]``) of a layer, as the bridge's attention exposes them (not detached)."""
        if matrix not in ("Q", "K", "V", "O"):
            raise CapabilityError(f"unknown head matrix W_{matrix}; one of W_Q, W_K, W_V, W_O")
        check_layers("head weights", f"W_{matrix}", [layer], self.n_layers, self.name, error=CapabilityError)
        try:
            return getattr(self.bridge.blocks[layer].attn, f"W_{matrix}")
        except (AttributeError, NotImplementedError) as exc:
            raise CapabilityError(f"{self.name}: the bridge exposes no per-head W_{matrix} of layer {layer} "
                                  f"({type(exc).__name__}); use a model whose attention TransformerLens splits "
                                  "into heads") from None

    # ------------------------------------------------------------------ decoding
    @property
    def supports_kv_cache(self) -> bool:
        """Whether the bridge returns a Hugging Face KV cache (:meth:`prefill`, :meth:`decode_step`)."""
        return bool(getattr(getattr(self.bridge, "adapter", None), "supports_kv_cache", True))

    def hooks(self, fwd_hooks: Sequence[tuple[str, Hook]]) -> AbstractContextManager[Any]:
        """Forward hooks attached to every pass inside the block (cheaper than per-pass ``run_with_hooks``)."""
        return self.bridge.hooks(fwd_hooks=list(fwd_hooks))

    def prefill(self, tokens: Tensor) -> Any:
        """Run ``tokens`` ``[1, pos]`` and return the KV cache (only the last position is unembedded)."""
        _, cache = self.bridge(tokens.to(self.device), return_type="logits_and_cache", use_cache=True,
                               logits_to_keep=1)
        return cache

    def decode_step(self, tokens: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """One step: logits of ``tokens`` ``[1, n]`` after the cached positions, and the grown cache."""
        return self.bridge(tokens.to(self.device), return_type="logits_and_cache", past_key_values=cache)

    # ------------------------------------------------------------------ fused attention
    def fused_attention(self, consumer: LayerConsumer | None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                        streaming: Streaming | None = None,
                        session: FusedSession | None = None) -> AbstractContextManager[set[int]]:
        """Within the block, forward passes run the fused kernel and hand ``consumer`` a view per layer
        (:meth:`mechbench.core.fused.FusedSession.run`); ``session`` holds the pass's state (a fresh one if
        None: a Recorder passes its own)."""
        return (FusedSession() if session is None else session).run(self.bridge, consumer, block_bytes, streaming)

    @property
    def supports_logits_to_keep(self) -> bool:
        """Whether the wrapped model is a Hugging Face model that accepts ``logits_to_keep``."""
        return getattr(self.bridge, "original_model", None) is not None and \
            "logits_to_keep" in inspect.signature(self.bridge.original_model.forward).parameters
