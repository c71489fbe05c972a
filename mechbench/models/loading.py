"""``load_model(spec)``: registry name, local Hugging Face directory, or Hugging Face Hub name."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch

from mechbench.core.hooked import Architecture, HookedModel
from mechbench.core.speech import SpeechModel, is_whisper_dir
from mechbench.errors import MechbenchError, UnknownModelError
from mechbench.models.registry import REGISTRY, hf_dir_for

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def unknown_model_error(spec: str, hub_failure: str | None = None) -> UnknownModelError:
    """The one-line error for a name that is neither registered, a directory nor a loadable Hub id."""
    close = difflib.get_close_matches(spec, list(REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    hub = f"; the Hugging Face Hub could not provide it: {hub_failure}" if hub_failure else ""
    return UnknownModelError(f"unknown model {spec!r}{hint}{hub}; known models: {', '.join(REGISTRY)}; or give a "
                             "local Hugging Face directory or a Hub name (see `mechbench models`)")


def _rope_base(bridge: Any) -> float:
    """RoPE's frequency base: the wrapped Hugging Face model's ``rope_theta`` where it states one (the
    bridge runs that model's rotary embedding; TransformerLens' ``rotary_base`` reads 10000 for SmolLM2,
    whose ``rope_theta`` is 100000), else the bridge config's ``rotary_base``."""
    hf_config = getattr(getattr(bridge, "original_model", None), "config", None)
    parameters = getattr(hf_config, "rope_parameters", None)
    theta = parameters.get("rope_theta") if isinstance(parameters, dict) else None
    theta = theta or getattr(hf_config, "rope_theta", None) or getattr(bridge.cfg, "rotary_base", None)
    return float(theta or 10000)


def architecture_of(bridge: Any) -> Architecture:
    """Read the architecture facts mechbench relies on from a TransformerBridge config."""
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    bidirectional = str(getattr(cfg, "attention_dir", "causal")) == "bidirectional"
    return Architecture(
        n_layers=int(cfg.n_layers), n_heads=n_heads, n_kv_heads=int(n_kv), d_head=int(cfg.d_head),
        d_model=int(cfg.d_model), n_ctx=int(cfg.n_ctx), positional=str(cfg.positional_embedding_type),
        causal=not bidirectional, has_cross_attention=False,
        rotary_dim=getattr(cfg, "rotary_dim", None) or None,
        rotary_base=_rope_base(bridge),
        rotary_adjacent_pairs=bool(getattr(cfg, "rotary_adjacent_pairs", False)))


def wrap_bridge(bridge: Any, name: str, source: str | None = None) -> HookedModel:
    """A HookedModel around an already-built TransformerBridge."""
    bridge.eval()
    return HookedModel(bridge, name, architecture_of(bridge), tokenizer=getattr(bridge, "tokenizer", None),
                       source=source)


#: Weight files that are Python pickles: loading one can run any code it carries.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(files: list[str], where: str, allow_pickle: bool) -> None:
    """Refuse weights that are only pickle files (unless ``allow_pickle``) and a model with no weights.

    ``files`` are the file names of a model directory or Hub repository (``where`` names it).
    """
    if any(name.endswith(".safetensors") for name in files):
        return
    pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES) and "training_args" not in name)
    if not pickles:
        raise UnknownModelError(f"{where} has a config.json but no weights (*.safetensors); save the model into it "
                                "with save_pretrained(), or give another directory or a registry name")
    if not allow_pickle:
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise UnknownModelError(f"{where} holds its weights only as pickle files ({shown}), which can run arbitrary "
                                "code when loaded; convert them to safetensors (save_pretrained(dir, "
                                "safe_serialization=True)), or if you trust them pass --allow-pickle-weights "
                                "(config: allow_pickle_weights: true)")


def _hub_files(name: str) -> list[str] | None:
    """File names of a Hub repository: its listing online, else its cached snapshot; None when unknown."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        if not constants.HF_HUB_OFFLINE and os.environ.get("TRANSFORMERS_OFFLINE") != "1":
            return list(huggingface_hub.list_repo_files(name))
    except Exception:  # any failure (network, unknown repo): the cache, then the loader's own error decide
        pass
    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id: the loader's own error names the spec
        return None
    return [p.name for p in Path(cached).parent.iterdir()] if isinstance(cached, str) else None


def _boot(path_or_name: str, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise between our own lines
    try:
        return TransformerBridge.boot_transformers(path_or_name, device=device, dtype=dtype)
    finally:
        hf_logging.enable_progress_bar()


def _speech_or_text(path_or_name: str, name: str, source: str, device: str, dtype: torch.dtype,
                    whisper: bool) -> HookedModel | SpeechModel:
    """A SpeechModel for a Whisper checkpoint (TransformerLens cannot wrap it), else the TransformerBridge."""
    if whisper:
        return SpeechModel.from_pretrained(path_or_name, name, source=source, device=device, dtype=dtype)
    return wrap_bridge(_boot(path_or_name, device, dtype), name, source=source)


def _hub_is_whisper(name: str) -> bool:
    """Whether a Hub repository's ``config.json`` (downloaded, or from the local cache offline) is Whisper's."""
    import huggingface_hub

    try:
        return is_whisper_dir(Path(huggingface_hub.hf_hub_download(name, "config.json")))
    except Exception:  # unknown repo, offline without a cache: the TransformerBridge path reports it
        return False


def load_model(spec: str, device: str = "cpu", dtype: str = "float32",
               allow_pickle: bool = False) -> HookedModel | SpeechModel:
    """Load a model by registry name (``smollm2-135m``, ``gemma3-270m``, ``minilm-l6``, ``whisper-tiny-en``,
    ``toy-planted``, ``toy-induction``), local Hugging Face directory, or Hugging Face Hub name (``gpt2``,
    ``org/model``). Whisper checkpoints (``model_type: whisper``) load as a
    :class:`~mechbench.core.speech.SpeechModel`, everything else through TransformerBridge (a
    :class:`~mechbench.core.hooked.HookedModel`); both are a :class:`~mechbench.core.model.ModelInterface`.

    A directory or Hub repository whose weights are only pickle files (``pytorch_model.bin``, ``*.pt``,
    ...) is refused unless ``allow_pickle`` (:func:`check_weight_files`); even then transformers reads
    them with ``torch.load(weights_only=True)``, and prefers ``*.safetensors`` whenever both exist.
    Raises UnknownModelError / ModelPackMissingError with the fix in one line.
    """
    if dtype not in DTYPES:
        raise MechbenchError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if spec in REGISTRY:
        entry = REGISTRY[spec]
        if entry.kind == "toy":
            from mechbench.models import toy

            return toy.load_toy(spec, device=device, dtype=torch_dtype)
        directory = hf_dir_for(entry)
        return _speech_or_text(str(directory), spec, entry.source, device, torch_dtype, is_whisper_dir(directory))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"directory {spec!r} is not a Hugging Face model directory (no config.json); "
                                    "save the model with save_pretrained() or give a registry name")
        check_weight_files([p.name for p in path.iterdir()], f"model directory {spec!r}", allow_pickle)
        return _speech_or_text(str(path), spec, str(path.resolve()), device, torch_dtype, is_whisper_dir(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise UnknownModelError(f"model directory {spec!r} does not exist; give an existing Hugging Face directory "
                                f"or a registry name ({', '.join(REGISTRY)})")
    files = _hub_files(spec)
    if files is not None:
        check_weight_files(files, f"Hub model {spec!r}", allow_pickle)
    if _hub_is_whisper(spec):
        return _speech_or_text(spec, spec, spec, device, torch_dtype, whisper=True)
    try:
        bridge = _boot(spec, device, torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
        first_line = (str(exc).splitlines() or [exc.__class__.__name__])[0][:160]
        reason = f"offline and not in the local Hugging Face cache ({first_line})" if offline else first_line
        raise unknown_model_error(spec, reason) from None
    return wrap_bridge(bridge, spec, source=spec)
