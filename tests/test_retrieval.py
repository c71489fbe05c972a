"""Retrieval heads (Wu et al. 2024): metric functions, streaming decode, NIAH trials, ground truth on toy-planted.

Ground truth: in ``toy-planted`` head 1.0 is an induction head (it attends to the token after an
earlier occurrence of the current token and copies it). A prompt that ends with the first token of
an earlier block makes greedy decoding copy the block, so 1.0 must score 1 and every other head 0.
"""

from __future__ import annotations

import pytest
import torch

from mechbench.analyses.retrieval import (
    RetrievalConfig,
    check_config,
    copy_events,
    masking_experiment,
    random_heads,
    retrieval_scores,
    rouge1_recall,
    run_retrieval,
    run_trial,
)
from mechbench.core.decoding import greedy_decode
from mechbench.core.interventions import mask_heads_hooks, uniform_attention
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError, DatasetError
from mechbench.models.toy import PLANTED_CTX, PLANTED_HEADS
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import Needle, NiahTrial, build_trial, grid, load_haystack, load_needles

CUE = 1
ANSWER = [2, 3, 4, 5, 6]
#: BOS, filler, the "needle" (CUE + ANSWER), filler, and CUE again: induction copies ANSWER, then 12 13 14.
PROMPT = [0, 7, 8, CUE, *ANSWER, 12, 13, 14, 9, 10, CUE]
SPAN = (4, 9)
INDUCTION = PLANTED_HEADS["induction"]


def planted_trial(answer: list[int] = ANSWER, span: tuple[int, int] = SPAN, trial_id: str = "copy") -> NiahTrial:
    return NiahTrial(id=trial_id, needle_id="block", context_length=len(PROMPT), depth=20,
                     prompt_ids=torch.tensor(PROMPT), answer_span=span, answer=" ".join(map(str, answer)))


def brute_force(model, prompt: list[int], generated: list[int], span: tuple[int, int]):
    """Argmax keys and scores from the full attention patterns of the whole generated sequence, run once."""
    cache = Recorder(model, batch_size=1, progress=False).cache(model.tokenize_dataset([prompt + generated[:-1]]),
                                                                ["pattern"])
    argmax = torch.zeros(len(generated), model.n_layers, model.n_heads, dtype=torch.long)
    scores = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    for step, token in enumerate(generated):
        query = len(prompt) - 1 + step
        for layer in range(model.n_layers):
            row = cache[model.hook_name("pattern", layer)][0, :, query, : query + 1]
            for head in range(model.n_heads):
                j = int(row[head].argmax())
                argmax[step, layer, head] = j
                if span[0] <= j < span[1] and prompt[j] == token:
                    scores[layer, head] += 1.0 / (span[1] - span[0])
    return argmax, scores


# ---------------------------------------------------------------------------------------------- metric functions
def test_rouge1_recall():
    assert rouge1_recall("Take a walk in the park", "I would take a WALK.") == pytest.approx(3 / 6)
    assert rouge1_recall("a a b", "a b") == pytest.approx(2 / 3)  # multiplicity: one 'a' matched
    assert rouge1_recall("under the blue flowerpot", "Under the blue flowerpot!") == 1.0
    assert rouge1_recall("", "anything") == 0.0
    assert rouge1_recall("red dog", "") == 0.0
    # Porter stemming of words longer than 3 characters, as rouge_score(use_stemmer=True)
    assert rouge1_recall("records were broken", "the record was broken") == pytest.approx(2 / 3)
    assert rouge1_recall("walks", "walking") == 1.0
    assert rouge1_recall("walks", "walking", stem=False) == 0.0


def test_uniform_attention_spreads_over_visible_keys():
    pattern = torch.softmax(torch.randn(2, 3, 4, 6), -1)
    edited = uniform_attention(pattern, [1])
    # 4 queries are the last 4 of 6 positions: query i sees keys 0..2+i
    for i in range(4):
        expected = torch.zeros(6)
        expected[: 3 + i] = 1 / (3 + i)
        assert torch.allclose(edited[:, 1, i], expected.expand(2, 6))
    assert torch.equal(edited[:, [0, 2]], pattern[:, [0, 2]])
    decode = uniform_attention(torch.softmax(torch.randn(1, 2, 1, 5), -1), [0, 1])
    assert torch.allclose(decode, torch.full((1, 2, 1, 5), 0.2))
    assert torch.allclose(uniform_attention(pattern, [0], causal=False)[:, 0], torch.full((2, 4, 6), 1 / 6))


def test_ranked_and_random_heads():
    scores = torch.tensor([[0.1, float("nan"), 0.9], [0.5, 0.0, 0.1]], dtype=torch.float64)
    assert ranked_heads(scores) == [(0, 2), (1, 0), (0, 0), (1, 2), (1, 1), (0, 1)]
    drawn = random_heads(scores, 2, exclude_top=2, generator=torch.Generator().manual_seed(0))
    assert len(set(drawn)) == 2 and not set(drawn) & {(0, 2), (1, 0)}
    assert drawn == random_heads(scores, 2, exclude_top=2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"only 1 heads lie outside the top 5, fewer than k=2"):
        random_heads(scores, 2, exclude_top=5)


def test_copy_events_need_span_and_matching_token():
    prompt = torch.tensor([0, 5, 6, 7, 9])
    span = (1, 4)
    # steps x layer(1) x head(3): head 0 copies every step, head 1 attends in span but emits other tokens,
    # head 2 attends outside the span to a matching token.
    argmax = torch.tensor([[[1, 2, 4]], [[2, 1, 4]], [[2, 3, 4]]])
    generated = torch.tensor([5, 6, 6])
    events = copy_events(argmax, generated, prompt, span)
    assert events[:, 0, 0].tolist() == [True, True, True]  # the same needle token copied twice counts twice
    assert events[:, 0, 1].tolist() == [False, False, False]
    assert not events[:, 0, 2].any()


def test_retrieval_scores_average_only_counted_trials():
    trial_scores = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.5, 4 / 3]]], dtype=torch.float64)
    counted = torch.tensor([True, False, True])
    assert retrieval_scores(trial_scores, counted).tolist() == [[0.75, 2 / 3]]
    assert torch.isnan(retrieval_scores(trial_scores, torch.zeros(3, dtype=torch.bool))).all()


def test_reference_grid():
    lengths, depths = grid(0, 50000, 20, 10)
    assert lengths[:3] == [0, 2632, 5263] and lengths[-1] == 50000
    assert depths == [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]


# ---------------------------------------------------------------------------------------------- ground truth
def test_planted_induction_head_is_the_only_retrieval_head(planted):
    result = run_trial(planted, planted_trial(), max_new_tokens=8)
    assert result.decoding.generated.tolist() == [*ANSWER, 12, 13, 14]
    assert not result.decoding.used_kv_cache  # TL-native toy: no Hugging Face cache, sequence re-run per step
    assert result.success and result.rouge_recall == 1.0
    scores = result.head_scores
    assert float(scores[INDUCTION]) == pytest.approx(1.0)
    others = scores.clone()
    others[INDUCTION] = 0.0
    assert float(others.abs().max()) == 0.0
    # independent brute force from the full patterns of the generated sequence
    argmax, brute = brute_force(planted, PROMPT, result.decoding.generated.tolist(), SPAN)
    assert torch.equal(result.decoding.argmax_keys, argmax)
    assert torch.allclose(scores, brute, rtol=0, atol=1e-12)


def test_run_retrieval_rows_exclude_failed_trials(planted):
    trials = [planted_trial(), planted_trial(answer=[7, 8], span=(1, 3), trial_id="miss")]
    frame = run_retrieval(planted, trials, max_new_tokens=5, progress=False)
    heads = frame[frame.metric == "retrieval_score"].set_index(["layer", "head"])
    assert len(heads) == planted.n_layers * planted.n_heads
    assert heads.loc[INDUCTION, "value"] == pytest.approx(1.0)  # the failed trial is left out, not averaged in
    assert (heads.drop(index=[INDUCTION])["value"] == 0).all()
    assert (heads["n_trials"] == 1).all()
    success = frame[frame.metric == "niah_success"].set_index("example")["value"]
    assert success.to_dict() == {"copy": 1.0, "miss": 0.0}
    recall = frame[frame.metric == "rouge1_recall"].set_index("example")["value"]
    assert recall.to_dict() == {"copy": 1.0, "miss": 0.0}
    per_trial = frame[frame.metric == "trial_retrieval_score"]
    assert len(per_trial) == 2 * planted.n_layers * planted.n_heads
    assert set(per_trial["context_length"]) == {len(PROMPT)} and set(per_trial["depth"]) == {20}
    assert set(frame["analysis"]) == {"retrieval"} and set(frame["model"]) == {"toy-planted"}


def test_masking_the_planted_copy_head_breaks_retrieval(planted):
    unmasked = run_trial(planted, planted_trial(), max_new_tokens=5)
    frame = masking_experiment(planted, [planted_trial()], unmasked.head_scores, [1], n_random=3, exclude_top=1,
                               generator=torch.Generator().manual_seed(0), baseline=[unmasked], max_new_tokens=5,
                               progress=False)
    success = frame[frame.metric == "masking_success_rate"]
    top = success[success.condition == "top"].iloc[0]
    assert top["masked_heads"] == "1.0" and top["value"] == 0.0  # the induction head masked: nothing is copied
    assert success[success.condition == "none"]["value"].tolist() == [1.0]
    for _, row in success[success.condition == "random"].iterrows():  # each draw re-run independently
        heads = [tuple(map(int, h.split("."))) for h in row["masked_heads"].split(",")]
        assert heads != [INDUCTION]
        rerun = run_trial(planted, planted_trial(), 5, fwd_hooks=mask_heads_hooks(planted, heads))
        assert row["value"] == float(rerun.success)
    # masking a head that attends uniformly anyway changes nothing
    same = run_trial(planted, planted_trial(), 5, fwd_hooks=mask_heads_hooks(planted, [(0, 2)]))
    assert torch.equal(same.decoding.generated, unmasked.decoding.generated)


def test_kv_cache_decode_matches_full_recompute(tiny_llama):
    """The streaming path (prefill once, one token per step through the HF cache) gives the same tokens and
    argmaxes as re-running the sequence; the queries are scaled so attention is sharp (no near-ties)."""
    prompt, _ = tiny_llama.tokenize("the cat sat on the mat . the dog ran to the house . the cat")
    layers = tiny_llama.bridge.original_model.model.layers
    saved = [layer.self_attn.q_proj.weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.self_attn.q_proj.weight.mul_(100.0)
        cached = greedy_decode(tiny_llama, prompt, 6, use_kv_cache=True)
        full = greedy_decode(tiny_llama, prompt, 6, use_kv_cache=False)
        eager = {cache: greedy_decode(tiny_llama, prompt, 6, use_kv_cache=cache, attention="eager")
                 for cache in (True, False)}
        argmax, _ = brute_force(tiny_llama, prompt.tolist(), cached.generated.tolist(), (1, 2))
        mask = mask_heads_hooks(tiny_llama, [(0, 1), (1, 2)])  # masked decoding: the causal offset of a cached step
        masked_cached = greedy_decode(tiny_llama, prompt, 6, use_kv_cache=True, fwd_hooks=mask)
        masked_full = greedy_decode(tiny_llama, prompt, 6, use_kv_cache=False, fwd_hooks=mask)
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved, strict=True):
                layer.self_attn.q_proj.weight.copy_(weight)
    assert cached.used_kv_cache and not full.used_kv_cache
    for decoding in (cached, full):  # the fused kernel's argmax of q . k equals the eager pattern's argmax
        assert torch.equal(decoding.generated, eager[True].generated)
        assert torch.equal(decoding.argmax_keys, eager[decoding.used_kv_cache].argmax_keys)
    assert torch.equal(cached.generated, full.generated)
    assert torch.equal(cached.argmax_keys, full.argmax_keys)
    assert torch.equal(cached.argmax_keys, argmax)
    assert torch.equal(masked_cached.generated, masked_full.generated)
    assert torch.equal(masked_cached.argmax_keys, masked_full.argmax_keys)
    assert (masked_cached.argmax_keys[:, 0, 1] == 0).all()  # uniform rows: argmax is the first key


# ---------------------------------------------------------------------------------------------- NIAH trials
HAYSTACK = "the cat sat on the mat . the dog ran to the house . it was big . she saw the small blue mat ."
NEEDLE = Needle(id="dog", needle="the red dog went home .", question="where did the red dog go ?",
                answer="red dog went home")


@pytest.mark.parametrize("depth", [0, 50, 100])
def test_niah_trial_places_needle_at_sentence_boundary(tiny_llama, depth):
    trial = build_trial(tiny_llama, NEEDLE, HAYSTACK, 40, depth, buffer=10, max_new_tokens=4)
    start, end = trial.answer_span
    assert tiny_llama.tokenizer.decode(trial.prompt_ids[start:end].tolist()) == "red dog went home"
    assert trial.prompt.endswith("Based on the content of the book, Question: where did the red dog go ?\nAnswer:")
    before, after = trial.prompt.split(NEEDLE.needle)
    if depth == 0:
        assert before == ""
    elif depth == 50:
        assert before.endswith(". ")  # inserted after a sentence end
    if depth == 100:  # appended to the trimmed haystack, as the reference does (which may end mid-sentence)
        assert after.startswith("Based on the content")
    else:
        assert after.startswith(" ")  # the haystack resumes after the needle
    assert trial.prompt_ids.numel() + 4 <= tiny_llama.architecture.n_ctx


@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(depth=120), r"needle depth 120% is deeper than the context"),
    (dict(context_length=200), r"longer than the context window of .* lower the largest context length"),
    (dict(context_length=12), r"context length 12 has no room for the haystack"),
])
def test_niah_errors_are_one_line(tiny_llama, kwargs, pattern):
    options = dict(context_length=40, depth=50) | kwargs
    with pytest.raises(DatasetError, match=pattern) as info:
        build_trial(tiny_llama, NEEDLE, HAYSTACK, options["context_length"], options["depth"], buffer=10,
                    max_new_tokens=4)
    assert "\n" not in str(info.value)


def test_bad_needles_and_trials_are_rejected(tmp_path, planted):
    with pytest.raises(DatasetError, match=r"answer 'blue cat' is not found in the needle text"):
        Needle(id="x", needle="the red dog went home .", question="q ?", answer="blue cat")
    path = tmp_path / "needles.jsonl"
    path.write_text('{"needle": "a b c .", "question": "q ?"}\n')
    with pytest.raises(DatasetError, match=r"line 1 is not a JSON object with string 'needle', 'question' and"):
        load_needles(str(path))
    path.write_text('{"needle": "Mr Green is mean.", "question": "Why?", "answer": "Because he is mean"}\n')
    with pytest.raises(DatasetError, match=r"is not found in the needle text; copy the answer verbatim"):
        load_needles(str(path))
    with pytest.raises(DatasetError, match=r"answer span \[10, 40\) is not a non-empty range inside the 15-token"):
        run_trial(planted, planted_trial(span=(10, 40)))
    with pytest.raises(DatasetError, match=r"longer than the context window of toy-planted"):
        greedy_decode(planted, torch.ones(PLANTED_CTX - 2, dtype=torch.long), 5)
    with pytest.raises(ConfigError, match=r"min_length \(900\) is above retrieval.max_length \(100\)"):
        check_config(RetrievalConfig(min_length=900, max_length=100))


def test_builtin_needles_and_haystack():
    needles = load_needles()
    assert len(needles) == 3 and all(n.answer in n.needle for n in needles)
    haystack = load_haystack()
    assert len(haystack.split()) > 2000
    assert not any(n.answer.lower() in haystack.lower() for n in needles)


# ---------------------------------------------------------------------------------------------- CLI
def test_analyze_retrieval_end_to_end(tmp_path, tiny_llama_dir, run_notebook):
    """CLI run with masking, its rows, then every code cell of notebooks/retrieval_heads.ipynb on that store."""

    from typer.testing import CliRunner

    from mechbench.cli import app
    from mechbench.store import ResultStore

    (tmp_path / "needles.jsonl").write_text(
        '{"id": "dog", "needle": "the red dog went home .", "question": "where ?", "answer": "red dog went home"}\n')
    (tmp_path / "hay.txt").write_text(HAYSTACK)
    config = tmp_path / "retrieval.yaml"
    config.write_text(f"model: {tiny_llama_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n  retrieval:\n"
                      f"    needles: {tmp_path / 'needles.jsonl'}\n    haystack: {tmp_path / 'hay.txt'}\n"
                      "    min_length: 36\n    max_length: 40\n    n_lengths: 2\n    n_depths: 2\n"
                      "    buffer: 10\n    max_new_tokens: 4\n"
                      "    masking: {top_k: [1, 2], n_random: 1, exclude_top: 2}\n")
    result = CliRunner().invoke(app, ["analyze", "retrieval", "--config", str(config), "--run-id", "r1",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = ResultStore(tmp_path / "store").read(analysis="retrieval", run_id="r1")
    heads = frame[frame["metric"] == "retrieval_score"]
    assert len(heads) == 2 * 4  # tiny Llama: 2 layers x 4 query heads, one row each even when no trial counts
    trials = frame[frame["metric"] == "niah_success"]
    assert sorted(zip(trials["context_length"], trials["depth"], strict=True)) == [(36, 0), (36, 100), (40, 0),
                                                                                    (40, 100)]
    n_counted = int(trials["value"].sum())
    assert (heads["n_trials"] == n_counted).all()
    assert heads["value"].isna().all() == (n_counted == 0)
    masking = frame[frame["metric"] == "masking_success_rate"].set_index(["condition", "k"])
    assert sorted(masking.index) == [("none", 0), ("random", 1), ("random", 2), ("top", 1), ("top", 2)]
    assert masking.loc[("none", 0), "value"] == pytest.approx(n_counted / 4)  # the unmasked detection trials
    assert (masking["n_trials"] == 4).all()
    assert [len(h.split(",")) for h in masking.loc[[("top", 2), ("random", 2)], "masked_heads"]] == [2, 2]
    shown = run_notebook("retrieval_heads.ipynb", tmp_path / "store")
    assert len(shown) == 5  # heatmap, two NIAH grids, two masking curves
    assert all(len(figure.data) > 0 for figure in shown)
