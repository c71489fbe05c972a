"""The limits of a loaded model that user input runs into, each with one shared one-line message.

* layer and head indices (config options such as ``distance.layers``, API arguments such as a hook's
  layer): :func:`check_layers`, :func:`check_heads`;
* the context window: :func:`check_context`;
* finite activations (float16 overflow): :func:`check_finite`.

Every analysis calls these instead of writing its own message, so the same mistake reads the same
everywhere (``docs/errors.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor

from mechbench.errors import ConfigError, DatasetError, MechbenchError, NonFiniteError


class ModelFacts(Protocol):
    """What the checks read from a model (a :class:`mechbench.core.hooked.HookedModel`)."""

    name: str

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...


def _shown(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple | set | frozenset) else str(value)


def check_layers(option: str, value: object, layers: Iterable[int], n_layers: int, model: str = "the model",
                 fix: str | None = None, error: type[MechbenchError] = ConfigError) -> None:
    """Raise ``error`` when a layer of ``layers`` (given by the user as ``option`` = ``value``) is not
    one of the model's ``0..n_layers-1``."""
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        remedy = fix or f"give layers from 0 to {n_layers - 1}"
        raise error(f"{option} {_shown(value)} names layer {bad[0]}, but {model} has layers 0..{n_layers - 1}; "
                    f"{remedy}")


def check_heads(option: str, value: object, heads: Iterable[tuple[int, int]], model: ModelFacts,
                fix: str | None = None, error: type[MechbenchError] = ConfigError) -> None:
    """Raise ``error`` when a ``(layer, head)`` of ``heads`` (the user's ``option`` = ``value``) does not
    exist in ``model``; the layer is checked first (:func:`check_layers`)."""
    heads = list(heads)
    check_layers(option, value, [layer for layer, _ in heads], model.n_layers, model.name, fix, error)
    bad = [(layer, head) for layer, head in heads if not 0 <= head < model.n_heads]
    if bad:
        layer, head = bad[0]
        remedy = fix or f"give heads from 0 to {model.n_heads - 1}"
        raise error(f"{option} {_shown(value)} names head {head} of layer {layer}, but {model.name} has heads "
                    f"0..{model.n_heads - 1} in each layer; {remedy}")


def context_window_message(subject: str, model_name: str, n_ctx: int, fix: str) -> str:
    """``{subject}, longer than the context window of {model} ({n_ctx}); {fix}``: the one wording of a
    too-long input (``subject`` says what and how many tokens, e.g. ``example 'a' has 90 tokens``)."""
    return f"{subject}, longer than the context window of {model_name} ({n_ctx}); {fix}"


def check_context(n_tokens: int, n_ctx: int, model_name: str, subject: str, fix: str) -> None:
    """Raise DatasetError (:func:`context_window_message`) when ``n_tokens`` exceed ``n_ctx``."""
    if n_tokens > n_ctx:
        raise DatasetError(context_window_message(subject, model_name, n_ctx, fix))


def check_finite(tensor: Tensor, where: str, model_name: str) -> None:
    """Raise NonFiniteError when ``tensor`` holds NaN or inf (one ``isfinite().all()``; ``where`` names
    the hook or output, e.g. ``blocks.1.attn.hook_pattern (layer 1)``)."""
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"{where} of {model_name} holds NaN or inf values in {str(tensor.dtype)[6:]}: the model "
                             "overflows at this precision; run it with dtype: float32 in the config")
