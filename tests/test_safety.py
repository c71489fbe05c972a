"""Bad inputs and security basics: each gives one line naming the problem and the fix, and a run that
fails midway leaves no result partition.

Layers and heads out of range, the context window, NaN / inf from a float16 overflow, needles and
answers that cannot be located, multi-token circuit answers, pickle weights, markup in token text and
YAML tags that would run code.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from mechbench.cli import app
from mechbench.config import load_config
from mechbench.core.limits import check_context, check_heads, check_layers, context_window_message
from mechbench.errors import (
    CapabilityError,
    ConfigError,
    DatasetError,
    NonFiniteError,
    UnknownModelError,
)
from mechbench.models.loading import check_weight_files
from mechbench.store import ResultStore

SCRIPT = "<script>window.__pwned=1</script>"
IMAGE = '<img src=x onerror="window.__pwned=1">'
MODEL = SimpleNamespace(name="smollm2-135m", n_layers=30, n_heads=9)


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def cli_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------- shared checks
def test_layer_and_head_checks_share_one_message():
    with pytest.raises(ConfigError) as info:
        check_layers("distance.layers", [3, 40], [3, 40], 30, "smollm2-135m")
    assert one_line(info) == ("distance.layers [3, 40] names layer 40, but smollm2-135m has layers 0..29; give layers "
                              "from 0 to 29")
    with pytest.raises(CapabilityError) as info:
        check_heads("masked heads", [(2, 9)], [(2, 9)], MODEL, error=CapabilityError)
    assert one_line(info) == ("masked heads [(2, 9)] names head 9 of layer 2, but smollm2-135m has heads 0..8 in "
                              "each layer; give heads from 0 to 8")
    with pytest.raises(ConfigError, match=r"names layer -1, but smollm2-135m has layers 0\.\.29"):
        check_heads("sinks.calibration.heads", [(-1, 0)], [(-1, 0)], MODEL)
    check_heads("ok", [(29, 8)], [(29, 8)], MODEL)


def test_context_window_message_is_shared():
    assert context_window_message("example 'a' has 90 tokens", "m", 64, "shorten it") == (
        "example 'a' has 90 tokens, longer than the context window of m (64); shorten it")
    with pytest.raises(DatasetError) as info:
        check_context(65, 64, "m", "task 'ioi' example 'x' has 65 tokens", "use shorter prompts")
    assert one_line(info).endswith("longer than the context window of m (64); use shorter prompts")
    check_context(64, 64, "m", "fits", "nothing")


def test_out_of_range_layers_and_heads_on_a_model(planted):
    from mechbench.analyses.patterns import PatternsConfig, run_patterns_from_config
    from mechbench.core.interventions import mask_heads_hooks
    from mechbench.core.patching import head, patch_nodes_hooks

    with pytest.raises(CapabilityError) as info:
        planted.hook_name("pattern", 7)
    assert one_line(info) == ("hook blocks.7.attn.hook_pattern names layer 7, but toy-planted has layers 0..1; give "
                              "layers from 0 to 1")
    with pytest.raises(CapabilityError, match=r"^masked heads \[\(1, 0\), \(1, 7\)\] names head 7 of layer 1, but "
                                              r"toy-planted has heads 0\.\.\d+ in each layer"):
        mask_heads_hooks(planted, [(1, 7), (1, 0)])
    with pytest.raises(CapabilityError, match=r"^patched nodes \['L0H9'\] names head 9 of layer 0"):
        patch_nodes_hooks(planted, [head(0, 9)], {})
    with pytest.raises(ConfigError, match=r"^patterns\.layers \[0, 2\] names layer 2, but toy-planted has layers "
                                          r"0\.\.1; give layers from 0 to 1$"):
        run_patterns_from_config(planted, PatternsConfig(layers=[0, 2]), progress=False)


# ---------------------------------------------------------------------------------------------- NaN / inf
def build_overflowing_llama(directory: Path, source: Path) -> Path:
    """The tiny Llama with weights that are finite in float16 but whose residual stream is not:
    embeddings of 40000 plus an attention output of 64 x 6.4 x 100 = 40960 exceed float16's 65504."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(40000.0)
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.fill_(0.1)
            layer.self_attn.o_proj.weight.fill_(100.0)
    model.save_pretrained(directory)
    for name in source.glob("tok*"):
        shutil.copy(name, directory)
    return directory


def test_float16_overflow_fails_the_run_without_a_partition(tmp_path, tiny_llama_dir):
    overflow = build_overflowing_llama(tmp_path / "overflow", tiny_llama_dir)
    store = tmp_path / "store"
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {overflow}\nstore: {store}\ndtype: float16\nanalyses:\n  sinks: {{max_tokens: 8, "
                      "limit: 2}\n")
    line = cli_error(invoke("analyze", "--config", str(config), "--run-id", "half", "--no-progress"))
    assert re.fullmatch(rf"error: blocks\.0\.hook_resid_post \(layer 0\) of {re.escape(str(overflow))} holds NaN "
                        r"or inf values in float16: the model overflows at this precision; run it with dtype: "
                        r"float32 in the config", line), line
    manifest = ResultStore(store).manifest("half")
    assert manifest["status"] == "failed" and manifest["error"].startswith("NonFiniteError: blocks.0.hook_resid_post")
    assert not list(store.rglob("*.parquet"))
    config.write_text(config.read_text().replace("dtype: float16", "dtype: float32"))
    result = invoke("analyze", "--config", str(config), "--run-id", "full", "--no-progress", "--no-report")
    assert result.exit_code == 0, result.output


def test_non_finite_logits_are_named(tiny_llama):
    import torch

    from mechbench.core.limits import check_finite

    with pytest.raises(NonFiniteError) as info:
        check_finite(torch.tensor([1.0, float("nan")], dtype=torch.float16), "the logits", tiny_llama.name)
    assert one_line(info).startswith(f"the logits of {tiny_llama.name} holds NaN or inf values in float16")
    check_finite(torch.tensor([0.0, 1.0]), "the logits", tiny_llama.name)


# ---------------------------------------------------------------------------------------------- needles
HAYSTACK = "the cat sat on the mat . the dog ran to the house . it was big . she saw the small blue mat ."


def test_needle_answers_that_cannot_be_located(tiny_llama):
    from mechbench.tasks.niah import Needle, build_trial

    partial = Needle(id="cat", needle="the big cat sat on the mat .", question="who sat ?", answer="at on")
    with pytest.raises(DatasetError) as info:
        build_trial(tiny_llama, partial, HAYSTACK, 40, 50, buffer=10, max_new_tokens=4)
    assert one_line(info) == ("needle 'cat': answer 'at on' does not fall on token boundaries of the prompt (its "
                              "tokens read 'sat on'); make the answer whole words of the needle, without a "
                              "leading or trailing space")
    long = Needle(id="long", needle=" ".join(["the big cat sat on the mat ."] * 10), question="who ?", answer="big")
    with pytest.raises(DatasetError) as info:
        build_trial(tiny_llama, long, HAYSTACK, 40, 50, buffer=10, max_new_tokens=4)
    assert one_line(info) == (f"needle 'long' has 80 tokens, longer than the context window of {tiny_llama.name} "
                              "(64); shorten the needle")


def byte_level_model(tiny_llama):
    """The tiny Llama with a GPT-2 style byte-level BPE tokenizer (spaces belong to the next token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mechbench.core.hooked import HookedModel

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [HAYSTACK, "the secret city is Paris today .", "Based on the content of the book, Question: which city ?"]
    core.train_from_iterator(corpus * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    return HookedModel(tiny_llama.bridge, "bpe-llama", tiny_llama.architecture, tokenizer=tokenizer)


def test_answer_tokenised_with_its_leading_space_is_found(tiny_llama):
    from mechbench.tasks.niah import Needle, build_trial

    model = byte_level_model(tiny_llama)
    alone = model.tokenizer("Paris", add_special_tokens=False)["input_ids"]
    spaced = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert alone != spaced and len(spaced) == 1  # the prompt holds " Paris": the answer's own ids are not in it
    needle = Needle(id="city", needle="the secret city is Paris today .", question="which city ?", answer="Paris")
    trial = build_trial(model, needle, HAYSTACK, 40, 50, buffer=10, max_new_tokens=4)
    first, last = trial.answer_span
    assert trial.prompt_ids[first:last].tolist() == spaced
    trailing = Needle(id="city", needle=needle.needle, question=needle.question, answer="Paris ")
    with pytest.raises(DatasetError) as info:
        build_trial(model, trailing, HAYSTACK, 40, 50, buffer=10, max_new_tokens=4)
    assert one_line(info) == ("needle 'city': answer 'Paris ' does not fall on token boundaries of the prompt (its "
                              "tokens read ' Paris today'); make the answer whole words of the needle, without a "
                              "leading or trailing space")


def test_slow_tokenizer_without_offsets_is_refused(tiny_llama):
    from mechbench.core.hooked import HookedModel
    from mechbench.tasks.niah import Needle, build_trial

    class Slow:
        """Stands in for a Python (slow) tokenizer: no character offsets."""

        is_fast = False
        chat_template = None

        def __getattr__(self, name: str):
            return getattr(tiny_llama.tokenizer, name)

        def __call__(self, *args, return_offsets_mapping: bool = False, **kwargs):
            assert not return_offsets_mapping, "asked a slow tokenizer for offsets"
            return tiny_llama.tokenizer(*args, **kwargs)

    model = HookedModel(tiny_llama.bridge, "slow-llama", tiny_llama.architecture, tokenizer=Slow())
    needle = Needle(id="dog", needle="the red dog went home .", question="where ?", answer="red dog")
    with pytest.raises(CapabilityError) as info:
        build_trial(model, needle, HAYSTACK, 40, 50, buffer=10, max_new_tokens=4)
    assert one_line(info) == ("the tokenizer of slow-llama is a slow (Python) tokenizer without character offsets, "
                              "which locating a text span needs; give a model directory with a tokenizer.json "
                              "(a fast tokenizer)")


# ---------------------------------------------------------------------------------------------- circuit tasks
def test_every_multi_token_answer_is_named_at_once(tiny_llama):
    from mechbench.tasks.circuit_tasks import PairTask, tokenize_pairs

    ids = [f"p{i}" for i in range(5)]
    prompt = "the cat sat on the"
    task = PairTask("pets", ids, [prompt] * 5, ["the dog sat on the"] * 5,
                    [" mat", " big mat", " mat", " red mat", " small blue mat"],
                    [" house", " house", " the house", " house", " one two"])
    with pytest.raises(DatasetError) as info:
        tokenize_pairs(tiny_llama, task)
    assert one_line(info) == (f"task 'pets': 5 answers are not single tokens for {tiny_llama.name}: p1 answer ' big "
                              "mat' (2 tokens); p2 wrong ' the house' (2 tokens); p3 answer ' red mat' (2 tokens) and "
                              "2 more; answers must be single tokens (include the leading space, e.g. ' Mary')")


def test_token_ids_outside_the_vocabulary_are_refused(planted):
    from mechbench.tasks.circuit_tasks import PairTask, tokenize_pairs

    vocab = planted.vocab_size
    task = PairTask("ids", ["a"], [[0, 1, 2, vocab + 5]], [[0, 1, 3, 4]], [5], [6])
    with pytest.raises(DatasetError) as info:
        tokenize_pairs(planted, task)
    assert one_line(info) == (f"task 'ids' example 'a': token id {vocab + 5} is outside the vocabulary of toy-planted "
                              f"(0..{vocab - 1}); use ids the model knows")
    answer = PairTask("ids", ["b"], [[0, 1, 2]], [[0, 1, 3]], [-1], [6])
    with pytest.raises(DatasetError, match=r"example 'b': token id -1 is outside the vocabulary"):
        tokenize_pairs(planted, answer)
    with pytest.raises(DatasetError, match=rf"^example 'ex0': token id {vocab} is outside the vocabulary"):
        planted.tokenize_dataset([[0, vocab]])


# ---------------------------------------------------------------------------------------------- pickle weights
def test_weight_file_rules():
    check_weight_files(["config.json", "model.safetensors", "pytorch_model.bin"], "d", allow_pickle=False)
    check_weight_files(["config.json", "pytorch_model.bin"], "d", allow_pickle=True)
    with pytest.raises(UnknownModelError) as info:
        check_weight_files(["config.json", "b.pt", "a.ckpt", "training_args.bin", "c.bin", "d.bin"],
                           "model directory 'x'", allow_pickle=False)
    assert one_line(info) == ("model directory 'x' holds its weights only as pickle files (a.ckpt, b.pt, c.bin and 1 "
                              "more), which can run arbitrary code when loaded; convert them to safetensors "
                              "(save_pretrained(dir, safe_serialization=True)), or if you trust them pass "
                              "--allow-pickle-weights (config: allow_pickle_weights: true)")
    with pytest.raises(UnknownModelError) as info:
        check_weight_files(["config.json", "tokenizer.json"], "model directory 'y'", allow_pickle=True)
    assert one_line(info) == ("model directory 'y' has a config.json but no weights (*.safetensors); save the model "
                              "into it with save_pretrained(), or give another directory or a registry name")


@pytest.fixture(scope="module")
def pickle_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama's weights as a pickle (``torch.save``, what ``save_pretrained(dir, safe_serialization=False)``
    wrote before transformers 5, which always writes safetensors) beside its config and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("pickle-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    for name in tiny_llama_dir.glob("tok*"):
        shutil.copy(name, directory)
    return directory


def test_pickle_weights_load_only_when_allowed(tiny_llama, pickle_llama_dir, tmp_path):
    import torch

    from mechbench.models.loading import load_model

    with pytest.raises(UnknownModelError) as info:
        load_model(str(pickle_llama_dir))
    assert one_line(info).startswith(f"model directory {str(pickle_llama_dir)!r} holds its weights only as pickle "
                                     "files (pytorch_model.bin), which can run arbitrary code")
    trusted = load_model(str(pickle_llama_dir), allow_pickle=True)
    ids, _ = tiny_llama.tokenize("the cat sat on the mat .")
    with torch.no_grad():
        torch.testing.assert_close(trusted.bridge(ids[None]), tiny_llama.bridge(ids[None]))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(pickle_llama_dir / "config.json", empty)
    with pytest.raises(UnknownModelError, match=r"has a config\.json but no weights"):
        load_model(str(empty), allow_pickle=True)


def test_allow_pickle_weights_from_the_command_line(pickle_llama_dir, tmp_path):
    from mechbench.runner import plan_run

    config = tmp_path / "config.yaml"
    config.write_text(f"model: {pickle_llama_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n  sinks: {{max_tokens: 8, "
                      "limit: 2}\n")
    assert plan_run(config, []).config.allow_pickle_weights is False
    assert plan_run(config, [], allow_pickle_weights=True).config.allow_pickle_weights is True
    line = cli_error(invoke("analyze", "--config", str(config), "--no-progress", "--no-report"))
    assert "pass --allow-pickle-weights" in line
    result = invoke("analyze", "--config", str(config), "--allow-pickle-weights", "--run-id", "p", "--no-progress",
                    "--no-report")
    assert result.exit_code == 0, result.output
    assert ResultStore(tmp_path / "store").manifest("p")["config"]["allow_pickle_weights"] is True


def test_hub_repository_with_only_pickle_weights_is_refused(pickle_llama_dir, offline_hub):
    from mechbench.models.loading import load_model

    offline_hub(pickle_llama_dir, "someone/pickled")
    with pytest.raises(UnknownModelError) as info:
        load_model("someone/pickled")
    assert one_line(info).startswith("Hub model 'someone/pickled' holds its weights only as pickle files "
                                     "(pytorch_model.bin)")


# ---------------------------------------------------------------------------------------------- YAML
def test_yaml_tags_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    one_line(info)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- markup in tokens
def markup_frame() -> pd.DataFrame:
    """Rows of several analyses whose tokens and example ids are markup (what a prompt could hold)."""
    import torch

    from mechbench.analyses.patterns import pattern_rows
    from mechbench.store.schema import conform

    tokens = ["<s>", SCRIPT, IMAGE]
    common = {"model": "m", "run_id": "r"}
    patterns = pattern_rows(torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]]), tokens).assign(
        layer=0, example=SCRIPT, metric="attention", analysis="patterns", **common)
    attribution = []
    for metric, method, view in (("attribution", "integrated_gradients", None), ("attention", None, "all")):
        attribution += [{"analysis": "attribution", "metric": metric, "method": method, "view": view, "example": IMAGE,
                         "position": p, "token": t, "segment": "prompt", "value": 0.1 * (p + 1), **common}
                        for p, t in enumerate(tokens)]
    distance = [{"analysis": "distance", "metric": metric, "example": SCRIPT, "position": p, "token": t,
                 "value": float(p), **common} for metric in ("waad", "entropy") for p, t in enumerate(tokens)]
    distance.append({"analysis": "distance", "metric": "response_length", "example": SCRIPT, "value": 3.0, **common})
    sinks = [{"analysis": "sinks", "metric": "hidden_sink_token", "token": t, "value": 2.0, "n_heads": 1, **common}
             for t in tokens]
    return conform(pd.concat([patterns, pd.DataFrame(attribution), pd.DataFrame(distance), pd.DataFrame(sinks)],
                             ignore_index=True))


def test_figures_escape_token_text_and_example_ids():
    from mechbench.analyses import ANALYSES

    frame = markup_frame()
    built = [figure for name in ("attribution", "distance", "patterns", "sinks")
             for figure in ANALYSES[name].build_figures(frame[frame["analysis"] == name])]
    assert len(built) >= 5
    for figure in built:
        text = json.dumps(json.loads(figure.to_json()))  # to_json writes "<" as \u003c; read it back
        assert "<script" not in text and "<img" not in text, figure.layout.title.text
        assert "&lt;script&gt;" in text or "&lt;img" in text, figure.layout.title.text


@pytest.mark.browser
def test_markup_in_tokens_is_shown_never_run_in_chromium(tmp_path):
    """The report of rows whose tokens and example ids are script and image-onerror payloads, in headless
    Chromium: the payload text is on the page, and it never ran (``window.__pwned`` stays undefined)."""
    from playwright.sync_api import sync_playwright

    from mechbench.report import render_report

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the browser test: apt-get install chromium (make setup does)"
    page_file = tmp_path / "report.html"
    page_file.write_text(render_report(markup_frame(), {"run_id": "r", "model": IMAGE, "status": "complete",
                                                        "command": [SCRIPT]}), encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(600_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri(), wait_until="load")
            n_figures = page.locator("div.figure").count()
            page.wait_for_function(f"document.querySelectorAll('div.figure .main-svg').length >= {n_figures}")
            shown = page.evaluate("""() => Array.from(document.querySelectorAll('.main-svg, main > p, td, pre'))
                .map(e => e.textContent).join('\\n')""")
            pwned = page.evaluate("() => typeof window.__pwned")
        finally:
            browser.close()
    assert pwned == "undefined"
    assert not errors, errors
    for payload in (SCRIPT, IMAGE):
        assert payload in shown or payload.replace(" ", "·") in shown, payload
