"""Transformers compiled from RASP programs by tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a
Laboratory for Interpretability"), as mechbench models: every head does what the program says, so they are
ground truth for head roles, sink and pattern metrics and circuits.

:func:`tracr_model` takes an ``AssembledTransformerModel`` (``tracr.compiler.compiling.compile_rasp_to_model``,
package ``tracr-pypi``) and loads its weights into a TransformerBridge with TransformerLens' converter
(``transformer_lens.utilities.tracr``). Token ids are the program's input encoding (``tracr_token_ids``);
the logits are over its categorical output values (``tracr_output_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.errors import CapabilityError


def _native_state_dict(assembled: Any, d_vocab_out: int, output_label: str | None) -> dict[str, Tensor]:
    """TransformerLens' converted weights under the native bridge's module names: its MLP keys say
    ``fc_in``/``fc_out`` where the bridge's modules are ``in``/``out``, and the unembedding has no bias."""
    from transformer_lens.utilities.tracr import make_tracr_transformer_bridge_state_dict

    renamed = {key.replace(".mlp.fc_in.", ".mlp.in.").replace(".mlp.fc_out.", ".mlp.out."): value
               for key, value in make_tracr_transformer_bridge_state_dict(assembled, output_label).items()}
    return {**renamed, "head.bias": torch.zeros(d_vocab_out)}


def tracr_model(assembled: Any, name: str = "tracr", output_label: str | None = None) -> HookedModel:
    """A :class:`HookedModel` of a compiled RASP program (categorical output, no layer norm). ``output_label``
    is the label of the program's output (``program.named(...)``); without it, TransformerLens infers it
    from the residual labels, which fails when another categorical value has the same value set."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tracr import make_tracr_transformer_bridge_config

    from mechbench.models.loading import wrap_bridge

    try:
        config = make_tracr_transformer_bridge_config(assembled)
    except (AttributeError, KeyError, ValueError) as exc:
        raise CapabilityError(f"{name}: not a compiled tracr model with a categorical output ({exc}); compile it "
                              "with tracr.compiler.compiling.compile_rasp_to_model") from None
    bridge = TransformerBridge.boot_native(config, device="cpu")  # type: ignore[attr-defined]
    try:
        state = _native_state_dict(assembled, int(config.d_vocab_out), output_label)
    except ValueError as exc:
        raise CapabilityError(f"{name}: {exc}") from None
    bridge.load_state_dict(state, strict=True)
    return wrap_bridge(bridge, name, source="tracr")


def tracr_token_ids(assembled: Any, tokens: Sequence[Any]) -> Tensor:
    """``[len(tokens)]`` input ids of a program's tokens (the first is its BOS token)."""
    encoding = assembled.input_encoder.encoding_map
    return torch.tensor([encoding[token] for token in tokens])


def tracr_output_ids(assembled: Any) -> dict[Any, int]:
    """Output value -> logit index of a program with a categorical output."""
    return dict(assembled.output_encoder.encoding_map)
