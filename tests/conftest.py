"""Shared fixtures: toy models with known heads and a tiny Llama saved locally with transformers."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per pytest-xdist worker (two workers share the 2 CI cores), else up to two.
    Set through ``OMP_NUM_THREADS``, which torch reads when it is first imported: a process whose
    tests need no model (the xdist controller, a store-only run) never imports torch, which takes
    minutes on a slow CI machine. The process that reports (controller, or the only process with
    ``-n 0``) skips the interpreter teardown at exit, which ran for tens of minutes with torch loaded
    (``mechbench.process``); the controller ends xdist workers itself, killing any still up after 10 s."""
    worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if not worker and config.getoption("numprocesses", None):
        return  # the controller: its workers inherit its environment and choose for themselves
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", "1" if worker else str(min(2, os.cpu_count() or 1))))
    if "torch" in sys.modules:  # imported by a plugin before this hook: too late for the variable
        sys.modules["torch"].set_num_threads(threads)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The reporting process leaves with the session's exit status, skipping the teardown."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        from mechbench.process import skip_teardown_at_exit

        skip_teardown_at_exit(lambda: int(session.exitstatus))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Put every object alive before a test (torch, TransformerLens, the session's models: some 300k
    objects) out of the cyclic collector's reach (``gc.freeze`` is O(1)). On the CI machine one full
    collection over them took 17 s, and the collector starts such collections on its own again and
    again as a worker runs; a test's own garbage is still collected."""
    gc.freeze()


WORDS = (
    "the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "to", "house", "big", "small",
    "red", "blue", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "is", "was", "it", "he", "she", "they", "saw", "went", "home", ".", ",", "?", "!",
)


def build_word_tokenizer():
    """A word-level fast tokenizer that prepends <s>, built offline with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def build_tiny_llama(directory: Path, seed: int = 0, max_positions: int = 64) -> Path:
    """Save a randomly initialised 2-layer GQA Llama (4 query heads, 2 KV heads) with its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):
    from mechbench.models.loading import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def planted():
    from mechbench.models.loading import load_model

    return load_model("toy-planted")


@pytest.fixture(scope="session")
def distinct_token_sequences() -> list[list[int]]:
    """BOS + blocks of distinct planted-vocab tokens, repeated twice (clean induction targets)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    sequences = []
    for length in (10, 7, 12, 9):
        block = (torch.randperm(15, generator=generator)[:length] + 1).tolist()
        sequences.append([0, *block, *block])
    return sequences


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``publish(model_dir, repo_id)``: lay ``model_dir`` out as a downloaded Hub repository in a private,
    offline Hugging Face cache, exactly where an online user's download would land, and point
    huggingface_hub and transformers at that cache."""
    import shutil

    import huggingface_hub.constants as constants
    import transformers.utils.hub as hub_utils

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_utils, "TRANSFORMERS_CACHE", str(cache), raising=False)

    def publish(model_dir: Path, repo_id: str) -> None:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(model_dir, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)

    return publish


@pytest.fixture
def run_notebook(monkeypatch):
    """``run(name, store, replace=None)``: execute every code cell of ``notebooks/<name>`` against the store
    at ``store`` (its ``"../mechbench-results"`` replaced, and each ``replace`` key by its value, e.g. the
    model name) and return the figures it would show; ``run.namespace`` holds the notebook's variables."""
    import json

    import plotly.graph_objects as go

    shown: list[go.Figure] = []
    monkeypatch.setattr(go.Figure, "show", lambda self, *a, **k: shown.append(self))

    def run(name: str, store: Path, replace: dict[str, str] | None = None) -> list[go.Figure]:
        notebook = json.loads((Path(__file__).parents[1] / "notebooks" / name).read_text())
        namespace: dict = {}
        substitutions = {'"../mechbench-results"': repr(str(store)), **(replace or {})}
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                for old, new in substitutions.items():
                    source = source.replace(old, new)
                exec(compile(source, name, "exec"), namespace)
        run.namespace = namespace  # type: ignore[attr-defined]
        return shown

    return run
