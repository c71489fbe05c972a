"""One model interface: what analyses may ask of a model, as capability protocols, and the code every model shares.

mechbench loads two kinds of model, siblings under :class:`ModelBase`:

* :class:`~mechbench.core.hooked.HookedModel`, a TransformerLens ``TransformerBridge``: every text capability
  (:class:`HookSites`, :class:`HeadWeights`, :class:`Unembedding`, :class:`DecodeSteps`, :class:`FusedPath`);
* :class:`~mechbench.core.speech.SpeechModel`, a Whisper encoder-decoder: :class:`CrossAttention` only.

Both are a :class:`ModelInterface` (name, architecture facts, fingerprint, tokenisation). A capability a model
lacks is absent from it, not a method that raises: :func:`supports` says False, and an analysis that needs it
calls :func:`require`, which raises a one-line :class:`~mechbench.errors.CapabilityError`. A caller that reads a
member the model lacks anyway gets the same one-line error (:class:`MissingCapability`, which is also an
``AttributeError``, so ``hasattr`` and ``isinstance`` checks see the member as missing).

Only ``mechbench.core`` and ``mechbench.models`` reach into what a model wraps (``HookedModel.bridge``);
``tests/test_layering.py`` enforces it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from mechbench.core.dataset import Batch, TokenDataset, spans_to_token_positions
from mechbench.core.limits import check_context
from mechbench.errors import CapabilityError, DatasetError

if TYPE_CHECKING:
    from mechbench.core.fused import FusedSession, LayerConsumer, Streaming

#: A forward hook: ``fn(activation, hook)``; a returned tensor replaces the activation.
Hook = Callable[[Tensor, Any], Tensor | None]
#: The per-head weight matrices of an attention layer (``W_Q``, ``W_K``, ``W_V``, ``W_O``).
HeadMatrix = Literal["Q", "K", "V", "O"]


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


# ---------------------------------------------------------------------------- capabilities
@runtime_checkable
class ModelInterface(Protocol):
    """What every model has: facts, the weight fingerprint, tokenisation."""

    name: str
    source: str
    architecture: Architecture
    tokenizer: Any

    @property
    def n_layers(self) -> int: ...
    @property
    def n_heads(self) -> int: ...
    @property
    def causal(self) -> bool: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    def fingerprint(self) -> str: ...
    def tokenize(self, text: str, prepend_bos: bool | None = None) -> tuple[Tensor, list[str]]: ...
    def tokenize_dataset(self, items: Sequence[str] | Sequence[Sequence[int]], max_tokens: int | None = None,
                         prepend_bos: bool | None = None,
                         example_ids: Sequence[str] | None = None) -> TokenDataset: ...
    def check_token_ids(self, ids: Tensor, where: str) -> None: ...


@runtime_checkable
class HookSites(ModelInterface, Protocol):
    """TransformerLens hook points: named sites, head-major per-head tensors, forward passes with hooks."""

    def has_hook(self, name: str) -> bool: ...
    def hook_name(self, site: str, layer: int) -> str: ...
    def head_major(self, site: str, activation: Tensor) -> Tensor: ...
    def forward(self, tokens: Tensor) -> Tensor: ...
    def run_with_hooks(self, batch: Batch, hooks: Sequence[tuple[str, Hook]],
                       last_logits_only: bool = False) -> Tensor: ...
    def run_direct(self, batch: Batch, last_logits_only: bool = False) -> Tensor: ...


@runtime_checkable
class HeadWeights(ModelInterface, Protocol):
    """Per-head attention weights as TransformerLens lays them out (``W_O[h]`` ``[d_head, d_model]``, ...)."""

    def head_weight(self, layer: int, matrix: HeadMatrix) -> Tensor: ...


class Unembedding(ModelInterface, Protocol):
    """The final-norm site and the unembedding of its rows. (Check it with :func:`supports`: ``isinstance``
    would evaluate ``unembeds_chunks``, a forward pass.)"""

    @property
    def final_norm_hook(self) -> str | None: ...
    @property
    def unembeds_chunks(self) -> bool: ...
    def unembed(self, normed: Tensor) -> Tensor: ...


@runtime_checkable
class DecodeSteps(HookSites, Protocol):
    """What greedy decoding (:mod:`mechbench.core.decoding`) needs: hooks held over many passes, a KV-cache
    prefill and one-token steps."""

    @property
    def supports_kv_cache(self) -> bool: ...
    def hooks(self, fwd_hooks: Sequence[tuple[str, Hook]]) -> AbstractContextManager[Any]: ...
    def prefill(self, tokens: Tensor) -> Any: ...
    def decode_step(self, tokens: Tensor, cache: Any) -> tuple[Tensor, Any]: ...


@runtime_checkable
class FusedPath(ModelInterface, Protocol):
    """Forward passes whose attention runs mechbench's fused kernel (:mod:`mechbench.core.fused`)."""

    fused_support: bool | None

    def fused_attention(self, consumer: LayerConsumer | None, block_bytes: int = ...,
                        streaming: Streaming | None = None,
                        session: FusedSession | None = None) -> AbstractContextManager[set[int]]: ...


@runtime_checkable
class CrossAttention(ModelInterface, Protocol):
    """A speech encoder-decoder: log-mel input, greedy transcription, teacher-forced logits and the decoder's
    cross-attention over encoder frames."""

    n_encoder_frames: int
    sample_rate: int

    def log_mel(self, audio: np.ndarray) -> Tensor: ...
    def audio_frames(self, n_samples: int) -> int: ...
    def transcribe(self, features: Tensor, max_new_tokens: int = 64) -> list[int]: ...
    def decoder_logits(self, features: Tensor, generated: Sequence[int],
                       cross_attention: bool = False) -> tuple[Tensor, Tensor | None]: ...
    def token_logprobs(self, features: Tensor, generated: Sequence[int]) -> Tensor: ...
    def decode(self, ids: Sequence[int]) -> str: ...


#: Each capability protocol, as an error message names it.
CAPABILITIES: dict[type, str] = {
    HookSites: "TransformerLens hook points",
    HeadWeights: "per-head attention weights",
    Unembedding: "the final norm and unembedding",
    DecodeSteps: "greedy decoding with hooks",
    FusedPath: "the fused attention path",
    CrossAttention: "a speech encoder-decoder",
}


def members(protocol: type) -> frozenset[str]:
    """The public names a protocol (and the protocols it extends) declares: methods, properties, attributes."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if getattr(base, "_is_protocol", False) and base is not Protocol:
            names |= {name for name in (*vars(base), *vars(base).get("__annotations__", {}))
                      if not name.startswith("_")}
    return frozenset(names)


def supports(model: object, capability: type) -> bool:
    """Whether ``model`` has every member of the capability protocol, judged from its class and instance
    attributes (no property is evaluated, unlike ``isinstance``)."""
    cls, own = type(model), getattr(model, "__dict__", {})
    return all(name in own or any(name in vars(k) for k in cls.__mro__) for name in members(capability))


def require(model: Any, capability: type, what: str = "this analysis") -> Any:
    """``model`` if it has ``capability``; else raise a one-line CapabilityError that says ``what`` needs it."""
    if supports(model, capability):
        return model
    explain = getattr(model, "capability_error", None)
    if callable(explain):
        raise explain(what, capability)
    raise CapabilityError(f"{what} needs {CAPABILITIES.get(capability, capability.__name__)}, which "
                          f"{getattr(model, 'name', type(model).__name__)} does not have; use another model")


class MissingCapability(CapabilityError, AttributeError):
    """A member of a capability the model lacks was read: a CapabilityError (one line, for the user) that is
    also an AttributeError (``hasattr`` and protocol checks see the member as absent)."""


def capability_of(member: str, capabilities: Sequence[type] = tuple(CAPABILITIES)) -> type | None:
    """The capability protocol that declares ``member`` (beyond :class:`ModelInterface`), or None."""
    common = members(ModelInterface)
    return next((c for c in capabilities if member in members(c) - common), None)


# ---------------------------------------------------------------------------- shared code
class ModelBase:
    """Facts, fingerprint and tokenisation shared by every model; ``module`` holds its weights. A subclass states
    ``vocab_size`` (which :meth:`check_token_ids` reads) and implements the capabilities it has."""

    def __init__(self, module: torch.nn.Module, name: str, architecture: Architecture, tokenizer: Any | None = None,
                 source: str | None = None) -> None:
        self._module = module
        self.name = name
        self.architecture = architecture
        #: a Hugging Face tokenizer (untyped), or None for models fed token ids only
        self.tokenizer: Any = tokenizer
        self.source = source or name
        self._fingerprint: str | None = None

    if TYPE_CHECKING:  # stated by each subclass (see the class docstring)
        @property
        def vocab_size(self) -> int: ...

    # ------------------------------------------------------------------ capabilities
    def capability_error(self, what: str, capability: type) -> CapabilityError:
        """The one-line error for ``what`` needing a capability this model lacks."""
        return CapabilityError(f"{what} needs {CAPABILITIES.get(capability, capability.__name__)}, which "
                               f"{self.name} does not have; use another model")

    def _missing_member(self, name: str) -> AttributeError:
        """What reading ``name`` raises when the class does not define it: a :class:`MissingCapability` for a
        member of a capability this model lacks, else the usual AttributeError. (For a model's ``__getattr__``.)"""
        capability = None if name.startswith("_") else capability_of(name)
        if capability is None or supports(self, capability):
            return AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return MissingCapability(str(self.capability_error(f"this analysis (it uses {name})", capability)))

    # ------------------------------------------------------------------ facts
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
        return next(self._module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (of the first parameter)."""
        return next(self._module.parameters()).dtype

    def fingerprint(self) -> str:
        """SHA-256 over every parameter (name, shape, bytes): identifies the exact weights of a run."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self._module.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

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
