"""SpeechModel: a Whisper encoder-decoder, the sibling of HookedModel, over plain PyTorch hooks.

TransformerLens 4.3 cannot wrap Whisper (no adapter), so this class holds a transformers
``WhisperForConditionalGeneration`` (eager attention, so the attention weights exist) and gives an
analysis what it needs: log-mel features of 16 kHz audio, greedy transcription, teacher-forced
log-probabilities of generated tokens that are differentiable in the log-mel input, and the
cross-attention of every decoder layer and head, captured by forward hooks on the
``encoder_attn`` modules. Architecture facts describe the decoder (layers and heads of the
cross-attention); ``has_cross_attention`` is True.

It is a :class:`~mechbench.core.model.ModelInterface` with the :class:`~mechbench.core.model.CrossAttention`
capability and none of the text ones (hook sites, head weights, unembedding, decode steps, fused path): those
are absent, not methods that raise. An analysis checks with :func:`~mechbench.core.model.require`; a caller that
reads a text member anyway (``model.run_with_hooks``) gets the same one-line CapabilityError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from mechbench.core.limits import check_context
from mechbench.core.model import Architecture, ModelBase
from mechbench.errors import CapabilityError

#: Whisper's feature front end: 80 (or 128) log-mel bins, 25 ms windows (n_fft 400), 10 ms hop (160 samples).
HOP_LENGTH = 160
N_FFT = 400
#: the decoder prompt token that asks for a transcript without timestamp tokens
NO_TIMESTAMPS = "<|notimestamps|>"


def is_whisper_dir(path: Path) -> bool:
    """Whether a Hugging Face model directory (or its ``config.json``) holds a Whisper model."""
    config = path / "config.json" if path.is_dir() else path
    try:
        return json.loads(config.read_text()).get("model_type") == "whisper"
    except (OSError, ValueError):
        return False


class SpeechModel(ModelBase):
    """A Whisper model with uniform access to cross-attention. Build it with :func:`mechbench.load_model`.

    ``whisper`` is the wrapped ``WhisperForConditionalGeneration`` (``bridge`` is the same, for existing callers).
    """

    def __init__(self, model: Any, name: str, tokenizer: Any, source: str | None = None) -> None:
        config = model.config
        architecture = Architecture(
            n_layers=int(config.decoder_layers), n_heads=int(config.decoder_attention_heads),
            n_kv_heads=int(config.decoder_attention_heads),
            d_head=int(config.d_model) // int(config.decoder_attention_heads), d_model=int(config.d_model),
            n_ctx=int(config.max_target_positions), positional="learned", causal=True, has_cross_attention=True)
        super().__init__(model, name, architecture, tokenizer=tokenizer, source=source)
        self.whisper = model
        from transformers import WhisperFeatureExtractor

        #: encoder frames after the stride-2 convolution, and the log-mel frames (twice as many) of a 30 s window
        self.n_encoder_frames = int(config.max_source_positions)
        self.n_mel_frames = 2 * self.n_encoder_frames
        self.n_mel = int(config.num_mel_bins)
        self.sample_rate = 16_000
        self.features = WhisperFeatureExtractor(feature_size=self.n_mel, sampling_rate=self.sample_rate,
                                                hop_length=HOP_LENGTH, n_fft=N_FFT,
                                                chunk_length=self.n_mel_frames * HOP_LENGTH // self.sample_rate)

    @classmethod
    def from_pretrained(cls, path: str | Path, name: str, source: str | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> SpeechModel:
        """Load a saved ``WhisperForConditionalGeneration`` and its tokenizer from a directory (or Hub name)."""
        from transformers import AutoTokenizer, WhisperForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise between our own lines
        try:
            model = WhisperForConditionalGeneration.from_pretrained(str(path), attn_implementation="eager",
                                                                    dtype=dtype)
        finally:
            hf_logging.enable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # transformers wraps PreTrainedModel.to in functools.wraps, whose stub hides the bound self from mypy
        return cls(model.to(device).eval(), name, tokenizer, source)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        a = self.architecture
        return (f"SpeechModel({self.name!r}: Whisper, {self.whisper.config.encoder_layers} encoder + {a.n_layers} "
                f"decoder layers x {a.n_heads} heads, cross-attention over {self.n_encoder_frames} frames)")

    @property
    def bridge(self) -> Any:
        """The wrapped Whisper model (:attr:`whisper`; the name HookedModel gives what it wraps)."""
        return self.whisper

    @property
    def vocab_size(self) -> int:
        return int(self.whisper.config.vocab_size)

    # ------------------------------------------------------------------ capabilities it lacks
    def capability_error(self, what: str, capability: type) -> CapabilityError:
        return CapabilityError(f"{what} needs a TransformerLens model, and {self.name} is a Whisper speech model; run "
                               "the `speech` analysis on it, or give a text model (--model smollm2-135m)")

    def __getattr__(self, name: str) -> Any:
        """Only for names the class lacks: a text capability's member (``run_with_hooks``, ``hook_name``, ...)
        raises a one-line :class:`~mechbench.core.model.MissingCapability`, anything else AttributeError."""
        raise self._missing_member(name)

    # ------------------------------------------------------------------ audio and tokens
    def log_mel(self, audio: np.ndarray) -> Tensor:
        """Whisper's normalised log-mel spectrogram of 16 kHz mono audio, padded to 30 s: ``[n_mel, n_mel_frames]``."""
        features = self.features(audio, sampling_rate=self.sample_rate, return_tensors="pt").input_features[0]
        return features.to(device=self.device, dtype=self.dtype)

    def audio_frames(self, n_samples: int) -> int:
        """Encoder frames that cover ``n_samples`` of audio (the rest of the 30 s window is padding)."""
        return min(self.n_encoder_frames, -(-n_samples // (2 * HOP_LENGTH)))

    @property
    def prompt_ids(self) -> list[int]:
        """Decoder prefix: start-of-transcript, then ``<|notimestamps|>`` when the tokenizer has it (every
        Whisper vocabulary does; transformers does not keep the id in a saved generation config)."""
        ids = [int(self.whisper.generation_config.decoder_start_token_id)]
        vocabulary = self.tokenizer.get_vocab()
        return ids + ([int(vocabulary[NO_TIMESTAMPS])] if NO_TIMESTAMPS in vocabulary else [])

    @property
    def eos_id(self) -> int:
        eos = self.whisper.generation_config.eos_token_id
        return int(eos[0] if isinstance(eos, list) else eos)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # ------------------------------------------------------------------ forward passes
    def transcribe(self, features: Tensor, max_new_tokens: int = 64) -> list[int]:
        """Greedy transcription of one log-mel input ``[n_mel, frames]``: the generated ids (no prefix, no EOS)."""
        check_context(len(self.prompt_ids) + max_new_tokens, self.architecture.n_ctx, self.name,
                      f"max_new_tokens {max_new_tokens} plus the prefix", "lower max_new_tokens")
        ids = list(self.prompt_ids)
        with torch.no_grad():
            encoded = self.whisper.model.encoder(features[None]).last_hidden_state
            for _ in range(max_new_tokens):
                logits = self.whisper(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids])).logits
                token = int(logits[0, -1].argmax())
                if token == self.eos_id:
                    break
                ids.append(token)
        return ids[len(self.prompt_ids):]

    @overload
    def decoder_logits(self, features: Tensor, generated: Sequence[int],
                       cross_attention: Literal[False] = ...) -> tuple[Tensor, None]: ...
    @overload
    def decoder_logits(self, features: Tensor, generated: Sequence[int],
                       cross_attention: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def decoder_logits(self, features: Tensor, generated: Sequence[int],
                       cross_attention: bool) -> tuple[Tensor, Tensor | None]: ...

    def decoder_logits(self, features: Tensor, generated: Sequence[int],
                       cross_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced decoder over ``prefix + generated`` for a batch of log-mel inputs ``[N, n_mel, frames]``.

        Returns the logits that predict each generated token ``[N, I, vocab]`` (query row ``p_i - 1`` for
        the token at ``p_i``) and, if asked, the cross-attention of those rows captured by forward hooks on
        every decoder layer's ``encoder_attn``: ``[N, layer, head, I, encoder_frames]``.
        """
        ids = torch.tensor([[*self.prompt_ids, *generated]], device=features.device).expand(features.shape[0], -1)
        rows = slice(len(self.prompt_ids) - 1, ids.shape[1] - 1)
        captured: dict[int, Tensor] = {}
        handles = []
        if cross_attention:
            for layer, block in enumerate(self.whisper.model.decoder.layers):
                def keep(module: Any, inputs: Any, output: tuple[Tensor, Tensor], layer: int = layer) -> None:
                    if output[1] is None:
                        raise CapabilityError(f"{self.name} returned no attention weights; load it with "
                                              "attn_implementation='eager' (mechbench.load_model does)")
                    captured[layer] = output[1][:, :, rows]
                handles.append(block.encoder_attn.register_forward_hook(keep))
        try:
            logits = self.whisper(input_features=features, decoder_input_ids=ids).logits[:, rows]
        finally:
            for handle in handles:
                handle.remove()
        attention = torch.stack([captured[i] for i in range(self.n_layers)], 1) if cross_attention else None
        return logits, attention

    def token_logprobs(self, features: Tensor, generated: Sequence[int]) -> Tensor:
        """``log p(y_i | x, y_<i)`` of each generated token for each input of the batch ``[N, I]``
        (differentiable in ``features``)."""
        logits, _ = self.decoder_logits(features, generated)
        ids = torch.tensor(list(generated), device=features.device)
        return logits.log_softmax(-1).gather(-1, ids[None, :, None].expand(logits.shape[0], -1, 1))[..., 0]
