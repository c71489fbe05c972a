"""HookedModel: one interface to per-head activations of any model mechbench can load.

It wraps a TransformerLens ``TransformerBridge`` (TL 4.x) and adds what analyses need and the
bridge leaves implicit: architecture facts (layers, query heads, KV heads, RoPE, causal or
bidirectional, cross-attention), a single site vocabulary (TL hook names), head-major per-head
tensors with GQA KV heads repeated to query heads (head index = query-head index, as in the
papers' reference code), tokenisation with explicit BOS handling, and a weight fingerprint.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechbench.core.dataset import Batch, TokenDataset, spans_to_token_positions
from mechbench.core.limits import check_context, check_layers
from mechbench.errors import CapabilityError, DatasetError

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

Hook = Callable[[Tensor, Any], Tensor | None]


@dataclass(frozen=True)
class Architecture:
    """Facts about a model that decide which analyses apply and how."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    positional: str
    causal: bool
    has_cross_attention: bool
    #: RoPE: rotated dimensions of a head (None: all of ``d_head``), base of the frequencies, and whether
    #: rotated pairs are adjacent channels (GPT-J style) rather than the two halves (Llama style)
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_adjacent_pairs: bool = False

    @property
    def uses_rope(self) -> bool:
        return self.positional == "rotary"

    @property
    def rotated_dims(self) -> int:
        """Channels of a head that RoPE rotates (``d_head`` unless the model rotates only part)."""
        return self.rotary_dim or self.d_head


class HookedModel:
    """A loaded model with uniform per-head access. Build it with :func:`mechbench.load_model`."""

    def __init__(self, bridge: Any, name: str, architecture: Architecture, tokenizer: Any | None = None,
                 source: str | None = None) -> None:
        self.bridge = bridge
        self.name = name
        self.architecture = architecture
        self.tokenizer = tokenizer
        self.source = source or name
        self._fingerprint: str | None = None
        #: whether the fused attention path serves this model (None: not checked yet; see core.fused)
        self.fused_support: bool | None = None
        self._unembeds_chunks: bool | None = None

    # ------------------------------------------------------------------ facts
    def __repr__(self) -> str:
        a = self.architecture
        return (f"HookedModel({self.name!r}: {a.n_layers} layers x {a.n_heads} heads, {a.n_kv_heads} KV heads, "
                f"{a.positional} positions, {'causal' if a.causal else 'bidirectional'})")

    @property
    def n_layers(self) -> int:
        return self.architecture.n_layers

    @property
    def n_heads(self) -> int:
        return self.architecture.n_heads

    @property
    def causal(self) -> bool:
        return self.architecture.causal

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def fingerprint(self) -> str:
        """SHA-256 over every parameter (name, shape, bytes): identifies the exact weights of a run."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.bridge.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

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

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, prepend_bos: bool | None = None) -> tuple[Tensor, list[str]]:
        """Token ids of ``text`` and their text pieces.

        ``prepend_bos=None`` keeps the loaded tokenizer's behaviour (TransformerBridge sets
        ``add_bos_token=True``, so e.g. SmolLM2 inputs start with ``<|im_start|>``); ``True`` makes
        sure the sequence starts with BOS; ``False`` adds no special tokens (the plain Hugging Face
        tokenizer of models without a BOS, as the papers' reference code tokenises).
        """
        ids, _ = self._encode(text, prepend_bos)
        return torch.tensor(ids, dtype=torch.long), [self.tokenizer.decode([i]) for i in ids]

    def _encode(self, text: str, prepend_bos: bool | None,
                with_offsets: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (and character offsets, which need a fast tokenizer) under the ``prepend_bos``
        rule of :meth:`tokenize`."""
        if self.tokenizer is None:
            raise CapabilityError(f"model {self.name} has no tokenizer; pass token-id sequences instead of text")
        if with_offsets:
            self.require_offsets()
        encoded = self.tokenizer(text, add_special_tokens=prepend_bos is not False,
                                 return_offsets_mapping=with_offsets)
        ids: list[int] = list(encoded["input_ids"])
        offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]] if with_offsets else [(0, 0)] * len(ids)
        bos = self.tokenizer.bos_token_id
        if prepend_bos and bos is not None and (not ids or ids[0] != bos):
            ids, offsets = [bos, *ids], [(0, 0), *offsets]
        return ids, offsets

    def require_offsets(self) -> None:
        """Raise CapabilityError unless the tokenizer is a fast one: only those map tokens to characters."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise CapabilityError(f"the tokenizer of {self.name} is a slow (Python) tokenizer without character "
                                  "offsets, which locating a text span needs; give a model directory with a "
                                  "tokenizer.json (a fast tokenizer)")

    def token_span(self, text: str, start: int, end: int, prepend_bos: bool | None = None) -> tuple[int, int]:
        """Token positions ``[first, last)`` of the characters ``text[start:end]``, as tokenised by
        :meth:`tokenize` with the same ``prepend_bos`` (so positions index the model's input)."""
        _, offsets = self._encode(text, prepend_bos, with_offsets=True)
        try:
            return spans_to_token_positions(offsets, start, end)
        except ValueError as exc:
            raise DatasetError(f"character span [{start}, {end}) of the text: {exc}") from None

    def tokenize_dataset(self, items: Sequence[str] | Sequence[Sequence[int]], max_tokens: int | None = None,
                         prepend_bos: bool | None = None,
                         example_ids: Sequence[str] | None = None) -> TokenDataset:
        """Tokenise texts (or take token-id sequences), truncate to ``max_tokens``, check the context window."""
        if len(items) == 0:
            raise DatasetError("the dataset is empty; give at least one text")
        ids = list(example_ids) if example_ids is not None else [f"ex{i}" for i in range(len(items))]
        if len(ids) != len(items):
            raise DatasetError(f"{len(ids)} example ids for {len(items)} texts; give one id per text")
        limit = self.architecture.n_ctx
        tokens, texts = [], []
        for example_id, item in zip(ids, items, strict=True):
            if isinstance(item, str):
                if not item.strip():
                    raise DatasetError(f"example {example_id!r} is empty; remove it or give it text")
                token_ids, pieces = self.tokenize(item, prepend_bos)
            else:
                token_ids = torch.as_tensor(list(item), dtype=torch.long)
                pieces = [str(int(i)) for i in token_ids]
                if token_ids.numel() == 0:
                    raise DatasetError(f"example {example_id!r} has no tokens")
                self.check_token_ids(token_ids, f"example {example_id!r}")
            if max_tokens is not None:
                token_ids, pieces = token_ids[:max_tokens], pieces[:max_tokens]
            check_context(token_ids.numel(), limit, self.name, f"example {example_id!r} has {token_ids.numel()} tokens",
                          "lower max_tokens or shorten it")
            tokens.append(token_ids)
            texts.append(pieces)
        return TokenDataset(tokens=tokens, example_ids=ids, token_texts=texts)

    @property
    def supports_logits_to_keep(self) -> bool:
        """Whether the wrapped model is a Hugging Face model that accepts ``logits_to_keep``."""
        return getattr(self.bridge, "original_model", None) is not None and \
            "logits_to_keep" in inspect.signature(self.bridge.original_model.forward).parameters

    @property
    def vocab_size(self) -> int:
        """Number of token ids the embedding accepts (``0..vocab_size-1``)."""
        return int(self.bridge.cfg.d_vocab)

    def check_token_ids(self, ids: Tensor, where: str) -> None:
        """Raise DatasetError when a token id of ``ids`` (from ``where``) is outside the vocabulary."""
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.numel():
            raise DatasetError(f"{where}: token id {int(bad[0])} is outside the vocabulary of {self.name} "
                               f"(0..{self.vocab_size - 1}); use ids the model knows")

    @property
    def pad_id(self) -> int:
        """Token id used for right padding (never seen by a real query; see :class:`Batch`)."""
        if self.tokenizer is not None:
            for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
                if candidate is not None:
                    return int(candidate)
        return 0
