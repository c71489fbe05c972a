"""Hidden sinks, massive activations, ACT calibration and the StreamingLLM cache: metric invariants
and ground truth on the planted model (its delimiter head 1.2 is a hidden sink)."""

from __future__ import annotations

import json

import pytest
import torch

from mechbench.analyses.sinks import (
    CalibrationConfig,
    SinksConfig,
    act_edits,
    hidden_sinks,
    massive_activations,
    run_calibration,
    run_sinks,
    run_sinks_from_config,
    run_streaming,
    search_calibration_heads,
    sink_scores,
)
from mechbench.core.dataset import Batch
from mechbench.core.interventions import (
    calibrate_attention,
    pattern_edit_hooks,
    renormalise_to_keys,
    start_recent_keys,
)
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError, DatasetError
from mechbench.models.toy import PLANTED_CTX, PLANTED_DELIMITER, PLANTED_HEADS, PLANTED_UNIFORM_HEADS
from mechbench.tasks.classification import accuracy, label_logprobs, load_classification


def causal_pattern(generator: torch.Generator, batch: int = 3, heads: int = 2, n: int = 12) -> torch.Tensor:
    scores = torch.randn(batch, heads, n, n, generator=generator, dtype=torch.float64) * 2
    scores[..., :, 0] += 3  # a first-token sink
    scores[..., :, 5] += 4  # a hidden sink
    return scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")).softmax(-1)


def test_calibration_keeps_rows_normalised_and_scales_sink_columns_by_beta():
    pattern = causal_pattern(torch.Generator().manual_seed(0))
    sinks = hidden_sinks(sink_scores(pattern), threshold=0.1)
    assert sinks[..., 5].all() and not sinks[..., 0].any()  # the first sink is left alone, as in ACT
    beta = 0.4
    calibrated = calibrate_attention(pattern, sinks, beta)
    torch.testing.assert_close(calibrated.sum(-1), torch.ones(pattern.shape[:-1], dtype=torch.float64))
    columns = sinks[..., None, :].expand_as(pattern)
    torch.testing.assert_close(calibrated[columns], beta * pattern[columns])
    # the freed mass goes to the other keys in proportion to their attention
    gained = (calibrated - pattern).masked_fill(columns, 0.0)
    freed = (1 - beta) * (pattern * columns).sum(-1, keepdim=True)
    expected = freed * pattern.masked_fill(columns, 0.0) / pattern.masked_fill(columns, 0.0).sum(-1, keepdim=True)
    torch.testing.assert_close(gained, expected)
    assert (calibrated.triu(1) == 0).all()  # still causal
    torch.testing.assert_close(calibrate_attention(pattern, sinks, 1.0), pattern)


def test_hidden_sinks_drop_the_first_sink_and_optionally_the_tail():
    scores = torch.tensor([[0.9, 0.05, 0.3, 0.02, 0.5, float("nan")]], dtype=torch.float64)
    assert hidden_sinks(scores, 0.1).tolist() == [[False, False, True, False, True, False]]
    # keys 4 is seen by one query only (length 5): min_queries=2 drops it
    assert hidden_sinks(scores, 0.1, min_queries=2).tolist() == [[False, False, True, False, False, False]]
    no_first = torch.tensor([[0.05, 0.3, 0.4]], dtype=torch.float64)  # the first detected sink is position 1
    assert hidden_sinks(no_first, 0.1).tolist() == [[False, False, True]]


def test_window_mask_equals_masked_softmax():
    generator = torch.Generator().manual_seed(1)
    n = 10
    keep = start_recent_keys(n, start_size=2, recent_size=3)
    assert keep[9].nonzero().flatten().tolist() == [0, 1, 7, 8, 9]
    assert keep[3].nonzero().flatten().tolist() == [0, 1, 2, 3]
    logits = torch.randn(2, n, n, generator=generator, dtype=torch.float64)
    causal = torch.ones(n, n).tril().bool()
    full = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    direct = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    torch.testing.assert_close(renormalise_to_keys(full, keep), direct)


def test_massive_activations_find_the_planted_entry():
    resid = torch.randn(7, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    resid[3, 11] = -500.0
    resid[0, 2] = 200.0
    values, positions, channels, median = massive_activations(resid, top_k=2)
    assert values.tolist() == [500.0, 200.0]
    assert positions.tolist() == [3, 0] and channels.tolist() == [11, 2]
    assert median == resid.abs().flatten().sort().values[(resid.numel() - 1) // 2]


def delimiter_sequences() -> list[list[int]]:
    """BOS + ordinary tokens (never the delimiter) with one delimiter at position 20, 64 tokens."""
    generator = torch.Generator().manual_seed(3)
    sequences = []
    for _ in range(3):
        body = torch.randint(1, PLANTED_DELIMITER, (PLANTED_CTX - 1,), generator=generator).tolist()
        body[19] = PLANTED_DELIMITER
        sequences.append([0, *body])
    return sequences


def test_planted_hidden_sink_is_found_and_uniform_heads_have_none(planted):
    frame = run_sinks(planted, delimiter_sequences(), max_tokens=PLANTED_CTX, progress=False)
    hidden = frame[frame["metric"] == "hidden_sink"]
    delimiter_rows = hidden[(hidden["layer"] == 1) & (hidden["head"] == 2)]
    assert sorted(delimiter_rows["position"].unique()) == [20]
    assert len(delimiter_rows) == 3 and (delimiter_rows["value"] > 0.9).all()
    assert (delimiter_rows["token"] == str(PLANTED_DELIMITER)).all()
    heads = set(zip(hidden["layer"], hidden["head"], strict=True))
    assert not heads & set(PLANTED_UNIFORM_HEADS)
    assert PLANTED_HEADS["bos"] not in heads  # its only sink is position 0, which ACT leaves alone
    # under ACT's rule the last keys of the self head count (score 1/(T-s) > 0.1 for s >= T-9), minus the
    # first of them, which ACT treats as "the" sink; min_queries removes them
    self_rows = hidden[(hidden["layer"] == 1) & (hidden["head"] == 1)]
    assert set(self_rows["position"]) == set(range(PLANTED_CTX - 8, PLANTED_CTX))
    strict = run_sinks(planted, delimiter_sequences(), max_tokens=PLANTED_CTX, hidden_min_queries=16,
                       progress=False)
    strict_heads = set(zip(*[strict.loc[strict["metric"] == "hidden_sink", c] for c in ("layer", "head")],
                           strict=True))
    assert strict_heads == {PLANTED_HEADS["delimiter"]}
    tokens = strict[strict["metric"] == "hidden_sink_token"]
    assert tokens.iloc[0]["token"] == str(PLANTED_DELIMITER) and tokens.iloc[0]["value"] == 3
    assert tokens.iloc[0]["n_heads"] == 1 and tokens.iloc[0]["n_examples"] == 3


def test_massive_rows_match_an_independent_cache(planted):
    sequences = delimiter_sequences()
    frame = run_sinks(planted, sequences, max_tokens=PLANTED_CTX, progress=False)
    cache = Recorder(planted, progress=False).cache(planted.tokenize_dataset(sequences), ["resid_post"])
    rows = frame[frame["metric"] == "massive_activation"]
    assert len(rows) == 3 * planted.n_layers * 3
    for layer in range(planted.n_layers):
        resid = cache[f"blocks.{layer}.hook_resid_post"][1]
        top = rows[(rows["example"] == "ex1") & (rows["layer"] == layer)].sort_values("rank")
        assert top["value"].tolist() == pytest.approx(resid.abs().flatten().topk(3).values.tolist())
        first = top.iloc[0]
        assert resid[int(first["position"]), int(first["channel"])].abs().item() == pytest.approx(first["value"])
        median = resid.abs().median().item()
        assert first["ratio"] == (pytest.approx(first["value"] / median) if median > 0 else float("inf"))
    assert not rows["is_massive"].any()  # one-hot residuals of magnitude ~1 are not massive


def test_act_edit_in_the_model_calibrates_only_the_chosen_head(planted):
    tokens = torch.tensor([delimiter_sequences()[0]])
    name = planted.hook_name("pattern", 1)
    captured = {}

    def capture(pattern, hook):
        captured[len(captured)] = pattern.detach().clone()

    planted.bridge.run_with_hooks(tokens, fwd_hooks=[(name, capture)])
    edits = act_edits([PLANTED_HEADS["delimiter"]], beta=0.4)
    current = [Batch(tokens=tokens, lengths=torch.tensor([PLANTED_CTX]), indices=torch.tensor([0]))]
    planted.bridge.run_with_hooks(tokens, fwd_hooks=[*pattern_edit_hooks(planted, edits, current), (name, capture)])
    original, edited = captured[0][0], captured[1][0]
    torch.testing.assert_close(edited.sum(-1), torch.ones_like(edited.sum(-1)))
    torch.testing.assert_close(edited[2, 20:, 20], 0.4 * original[2, 20:, 20])
    torch.testing.assert_close(edited[[0, 1, 3]], original[[0, 1, 3]])  # other heads untouched
    torch.testing.assert_close(edited[2, :20], original[2, :20])  # rows that cannot see the delimiter
    assert (edited[2, 20:, 0] > original[2, 20:, 0]).all()  # the first sink is not shrunk: it gains mass


@pytest.fixture(scope="module")
def size_task(tmp_path_factory):
    """A two-label task in the tiny Llama's word vocabulary."""
    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    words = ["the cat", "a dog", "the house", "red mat", "one blue cat", "two dogs ran", "she saw it", "he went home"]
    with path.open("w") as handle:
        for i, text in enumerate(words):
            handle.write(json.dumps({"id": f"t{i}", "text": text, "label": "big" if i % 2 else "small"}) + "\n")
    return str(path)


def test_calibration_search_and_evaluation_are_consistent(tiny_llama, size_task):
    task = load_classification(size_task, template="{text} is", labels=("small", "big"))
    search = search_calibration_heads(tiny_llama, task, [(0, 0), (1, 3)], batch_size=3, progress=False)
    baseline = accuracy(label_logprobs(tiny_llama, task, 5), task.gold)
    for row in search.itertuples():
        edited = label_logprobs(tiny_llama, task, 2, act_edits([(row.layer, row.head)]))
        assert row.accuracy == accuracy(edited, task.gold)
        assert row.delta == pytest.approx(row.accuracy - baseline)
        assert row.selected == (row.delta > 0)
    config = CalibrationConfig(task=size_task, template="{text} is", labels=("small", "big"), calibration_size=4,
                               heads=[(1, 0), (1, 2)], batch_size=4)
    frame = run_calibration(tiny_llama, task, config, texts=None)
    rows = frame[frame["metric"] == "act_accuracy"].set_index(["split", "condition"])["value"]
    evaluation = task.split(4)[1]
    calibrated = label_logprobs(tiny_llama, evaluation, 4, act_edits([(1, 0), (1, 2)]))
    assert rows[("evaluation", "calibrated")] == accuracy(calibrated, evaluation.gold)
    assert (frame.loc[frame["metric"] == "act_accuracy", "n_heads"] == 2).all()
    with pytest.raises(ConfigError, match=r"^sinks\.calibration\.heads \[\(5, 0\)\] names layer 5, but .* has layers "
                                          r"0\.\.1; give layers from 0 to 1$"):
        run_calibration(tiny_llama, task, config.model_copy(update={"heads": [(5, 0)]}), texts=None)
    with pytest.raises(ConfigError, match=r"^sinks\.calibration\.heads \[\(1, 4\)\] names head 4 of layer 1, but .* "
                                          r"has heads 0\.\.3 in each layer; give heads from 0 to 3$"):
        run_calibration(tiny_llama, task, config.model_copy(update={"heads": [(1, 4)]}), texts=None)


def test_streaming_cache_matches_full_attention_when_nothing_is_evicted(tiny_llama):
    tokens = torch.randint(4, 40, (40,), generator=torch.Generator().manual_seed(4))
    frame = run_streaming(tiny_llama, tokens, start_size=4, recent_size=30)
    per_token = frame[frame["metric"] == "streaming_token_nll"].pivot_table(index="position", columns="cache",
                                                                           values="value")
    window = 34
    # before the window fills, the three caches see the same keys
    torch.testing.assert_close(torch.tensor(per_token.loc[:window, "full"].to_numpy()),
                               torch.tensor(per_token.loc[:window, "recent"].to_numpy()))
    assert not per_token.loc[window + 2:, "full"].equals(per_token.loc[window + 2:, "recent"])
    summary = frame[frame["metric"] == "streaming_nll"].set_index("cache")["value"]
    assert summary["full"] == pytest.approx(per_token.loc[window + 1:, "full"].mean())
    with pytest.raises(DatasetError, match="needs more than"):
        run_streaming(tiny_llama, tokens[:20], start_size=4, recent_size=30)


def test_sinks_config_blocks_run_from_the_config(tiny_llama, size_task):
    config = SinksConfig(max_tokens=16, calibration={"task": size_task, "template": "{text} is",
                                                     "labels": ["small", "big"], "calibration_size": 4,
                                                     "layers": [1]},
                         streaming={"max_tokens": 60, "start_size": 2, "recent_size": 8})
    frame = run_sinks_from_config(tiny_llama, config, progress=False)
    assert {"sink_score", "hidden_sink_count", "massive_activation", "act_search_delta", "act_accuracy",
            "act_text_nll", "streaming_nll"} <= set(frame["metric"])
    assert len(frame[frame["metric"] == "act_search_delta"]) == tiny_llama.n_heads
    # the per-head hidden-sink count is the detections of that head divided by the number of texts
    detections = frame[frame["metric"] == "hidden_sink"].groupby(["layer", "head"]).size()
    counts = frame[frame["metric"] == "hidden_sink_count"].set_index(["layer", "head"])["value"]
    n_texts = frame.loc[frame["metric"] == "sink_score", "example"].nunique()
    assert counts.to_dict() == pytest.approx((detections.reindex(counts.index, fill_value=0) / n_texts).to_dict())
    # the streaming summary is the mean of its per-token rows past the first window (2 + 8 tokens)
    tokens = frame[(frame["metric"] == "streaming_token_nll") & (frame["cache"] == "start+recent")]
    summary = frame[(frame["metric"] == "streaming_nll") & (frame["cache"] == "start+recent")]["value"].item()
    assert summary == pytest.approx(tokens.loc[tokens["position"] > 10, "value"].mean())
