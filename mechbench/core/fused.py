"""Fused attention with exact per-head patterns on demand: the fast path of every pattern metric.

Each layer of a forward pass runs the model's own Hugging Face attention module with mechbench's fused
kernel, which also returns the softmax normaliser per query, and hands the layer's post-RoPE queries and keys
plus the normaliser to a consumer as a :class:`FusedAttention` (a view that rebuilds any pattern entry exactly;
the kernel and the views are in :mod:`mechbench.core.fused_kernel`, whose names this module re-exports).

It applies to models whose attention bridge wraps a Hugging Face attention module that dispatches
through ``transformers``' attention interface (Llama, Qwen, Gemma 3, Mistral, ... ); logit
softcapping and learned sink logits have no fused kernel, so those models use the eager path.
:func:`supports_fused` checks a model once with a two-token forward pass against the eager one.

The state of a fused pass (its consumer, the layers served, block size, streaming mode, block buffer) is a
:class:`FusedSession`, owned by whoever runs the pass (a :class:`~mechbench.core.recorder.Recorder` owns one),
not a process-global: while a session runs, each attention module it drives points to it, and the attention
function ``transformers`` calls finds the session there. One pass at a time per session and per model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mechbench.core.fused_kernel import (
    DEFAULT_BLOCK_BYTES,
    AttentionPath,
    AttentionView,
    BlockBuffer,
    DenseAttention,
    FusedAttention,
    LayerConsumer,
    StreamedAttention,
    Streaming,
    _additive,
    attention_with_logsumexp,
)
from mechbench.core.model import FusedPath, supports
from mechbench.errors import CapabilityError

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "IMPLEMENTATION",
    "SESSION_ATTRIBUTE",
    "AttentionPath",
    "AttentionView",
    "BlockBuffer",
    "DenseAttention",
    "FusedAttention",
    "FusedSession",
    "LayerConsumer",
    "StreamedAttention",
    "Streaming",
    "attention_with_logsumexp",
    "fused_attention",
    "supports_fused",
    "use_fused",
]

#: Name under which mechbench's attention function is registered with ``transformers``.
IMPLEMENTATION = "mechbench_fused"
#: Attribute of a Hugging Face attention module that holds the session driving it (only while it runs).
SESSION_ATTRIBUTE = "_mechbench_fused_session"


def _repeat_heads(tensor: Tensor, n_heads: int) -> Tensor:
    return tensor if tensor.shape[1] == n_heads else tensor.repeat_interleave(n_heads // tensor.shape[1], dim=1)


class FusedSession:
    """The state of fused forward passes, one at a time: the consumer of each layer's view, the layers the kernel
    served, the block size, the streaming mode and the block buffer the pass's views share."""

    def __init__(self) -> None:
        self.consumer: LayerConsumer | None = None
        self.seen: set[int] = set()
        self.block_bytes = DEFAULT_BLOCK_BYTES
        self.streaming: Streaming | None = None
        self.buffer: BlockBuffer | None = None  # shared by the pass's views: one block is read at a time

    @property
    def running(self) -> bool:
        """Whether a pass of this session is under way."""
        return self.consumer is not None

    @contextlib.contextmanager
    def run(self, bridge: Any, consumer: LayerConsumer | None, block_bytes: int = DEFAULT_BLOCK_BYTES,
            streaming: Streaming | None = None) -> Iterator[set[int]]:
        """Within the block, forward passes of ``bridge`` run fused attention and call ``consumer`` per layer.

        ``streaming`` (a consumer that reads every row): each layer is a :class:`StreamedAttention`, whose row
        blocks also make the layer's output, instead of the fused kernel's output plus rows rebuilt from ``lse``.

        Other bridge hooks (residual stream, MLP, ...) still fire; hooks inside attention (``hook_pattern``,
        ``hook_rot_q``, ``hook_z``, ...) do not. Yields the set of layer indices the kernel has served.
        """
        attentions = _attention_bridges(bridge)
        if not attentions:
            raise CapabilityError("this model's attention is not a Hugging Face attention module the fused path can "
                                  "drive; run the analysis with attention: eager")
        if self.running or any(getattr(a.original_component, SESSION_ATTRIBUTE, None) is not None
                               for a in attentions):
            raise CapabilityError("a fused-attention pass is already running on this model; run one at a time")
        _register()
        configs = {id(a.original_component.config): a.original_component.config for a in attentions}
        top = getattr(getattr(bridge, "original_model", None), "config", None)
        if top is not None:
            configs[id(top)] = top
            for name in ("text_config", "decoder"):
                sub = getattr(top, name, None)
                if sub is not None and hasattr(sub, "_attn_implementation"):
                    configs[id(sub)] = sub
        before = {key: config._attn_implementation for key, config in configs.items()}
        self.consumer, self.seen, self.block_bytes = consumer or (lambda attention: None), set(), block_bytes
        self.streaming, self.buffer = streaming, BlockBuffer()
        try:
            for config in configs.values():
                config._attn_implementation = IMPLEMENTATION
            for attention in attentions:
                object.__setattr__(attention.original_component, SESSION_ATTRIBUTE, self)
                object.__setattr__(attention, "forward", attention.original_component.forward)
            yield self.seen
        finally:
            for attention in attentions:
                if "forward" in attention.__dict__:
                    object.__delattr__(attention, "forward")
                if SESSION_ATTRIBUTE in attention.original_component.__dict__:
                    object.__delattr__(attention.original_component, SESSION_ATTRIBUTE)
            for key, config in configs.items():
                config._attn_implementation = before[key]
            self.consumer, self.streaming, self.buffer = None, None, None

    def attend(self, layer: int, query: Tensor, key: Tensor, value: Tensor, scale: float, mask: Tensor | None,
               causal: bool) -> Tensor:
        """One layer's attention output ``[batch, head, n_queries, d]``; its view goes to the consumer."""
        self.seen.add(layer)
        if self.consumer is not None and self.streaming is not None and query.shape[2] > 1:
            streamed = StreamedAttention(layer, query, key, value, scale, mask, causal, self.block_bytes,
                                         self.streaming.attended_keys, self.buffer)
            self.consumer(streamed)
            return streamed.finish()
        output, lse = attention_with_logsumexp(query, key, value, scale, causal, mask)
        if self.consumer is not None:
            self.consumer(FusedAttention(layer, query, key, lse, scale, mask, causal, self.block_bytes, self.buffer))
        return output


def _fused_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                     attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[Tensor, None]:
    """The attention function ``transformers`` calls inside each attention module while a session runs."""
    if kwargs.get("softcap") is not None or getattr(module, "sinks", None) is not None:
        raise CapabilityError("this model's attention has logit softcapping or sink logits, which no fused "
                              "kernel computes; run the analysis with attention: eager")
    n_heads = query.shape[1]
    key, value = _repeat_heads(key, n_heads), _repeat_heads(value, n_heads)
    scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    mask = None if attention_mask is None else _additive(attention_mask, query.dtype)
    causal = mask is None and query.shape[2] > 1 and bool(getattr(module, "is_causal", True))
    if mask is not None and mask.shape[-1] != key.shape[-2]:
        mask = mask[..., : key.shape[-2]]
    session = getattr(module, SESSION_ATTRIBUTE, None)
    if session is None:  # an attention module outside the blocks a session drives, reading a config it switched
        output, _ = attention_with_logsumexp(query, key, value, scale, causal, mask)
    else:
        output = session.attend(int(getattr(module, "layer_idx", -1)), query, key, value, scale, mask, causal)
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _fused_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def _attention_bridges(bridge: Any) -> list[Any]:
    """The attention bridge of every block, each wrapping a Hugging Face attention module."""
    blocks = getattr(bridge, "blocks", None)
    if blocks is None:
        return []
    found = []
    for block in blocks:
        attention = getattr(block, "attn", None)
        original = getattr(attention, "original_component", None) if attention is not None else None
        if original is None or not hasattr(original, "layer_idx") or not hasattr(original, "config"):
            return []
        found.append(attention)
    return found


def fused_attention(bridge: Any, consumer: LayerConsumer | None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                    streaming: Streaming | None = None) -> contextlib.AbstractContextManager[set[int]]:
    """:meth:`FusedSession.run` of a fresh session: within the block, forward passes of ``bridge`` run fused
    attention and call ``consumer`` per layer; yields the set of layer indices the kernel has served."""
    return FusedSession().run(bridge, consumer, block_bytes, streaming)


def supports_fused(model: Any) -> bool:
    """Whether ``model`` (a HookedModel) can run the fused path: every layer is served by the fused kernel
    and a short forward pass, through the bridge and through the Hugging Face model itself, gives the eager
    logits (to 1e-4 relative). Checked once per model; False for a model without the capability."""
    if not supports(model, FusedPath):
        return False
    if model.fused_support is not None:
        return model.fused_support
    tokens = torch.tensor([[model.pad_id if model.pad_id < model.vocab_size else 0, 1, 2]], device=model.device)
    supported = False
    with torch.no_grad():
        eager = model.bridge(tokens)
        try:
            with model.fused_attention(None) as seen:
                fused = model.bridge(tokens)
                # passes that hook nothing run the Hugging Face model itself (HookedModel.run_direct)
                direct = model.bridge.original_model(input_ids=tokens).logits
            scale = float(eager.abs().max().clamp(min=1.0))
            supported = seen == set(range(model.n_layers)) and max(
                float((fused - eager).abs().max()), float((direct - eager).abs().max())) <= 1e-4 * scale
        except CapabilityError:
            supported = False
    model.fused_support = supported
    return supported


def use_fused(model: Any, attention: AttentionPath, conflict: str | None = None) -> bool:
    """Whether a pass runs on the fused path: never with ``eager``; with ``auto`` when the model supports it
    and nothing needs the eager attention (``conflict``, e.g. ``"also record pattern"``, says what does);
    ``fused`` insists and raises CapabilityError (one line) where it cannot run."""
    if attention == "eager":
        return False
    if attention == "fused":
        if conflict is not None:
            raise CapabilityError(f"attention: fused cannot {conflict}; use attention: eager")
        if not supports_fused(model):
            raise CapabilityError(f"the fused attention path does not cover {model.name} (its attention is not a "
                                  "Hugging Face attention module with a fused kernel); use attention: eager")
        return True
    return conflict is None and supports_fused(model)
