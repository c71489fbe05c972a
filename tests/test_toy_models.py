"""Ground truth: analyses must find exactly the heads planted (or trained) into toy models."""

from __future__ import annotations

import torch

from mechbench.analyses.head_roles import induction_scores, previous_token_scores
from mechbench.analyses.sinks import run_sinks, sink_scores
from mechbench.core.recorder import Recorder
from mechbench.models.loading import load_model
from mechbench.models.toy import PLANTED_HEADS
from mechbench.tasks.repeated import repeated_random_tokens


def head_table(frame, metric, position):
    rows = frame[(frame["metric"] == metric) & (frame["position"] == position)]
    return {(int(r.layer), int(r.head)): r.value for r in rows.itertuples()}


def test_planted_architecture(planted):
    a = planted.architecture
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.causal, a.uses_rope) == (2, 4, 4, True, False)


def test_bos_head_is_the_sink_and_previous_token_head_is_not(planted, distinct_token_sequences):
    frame = run_sinks(planted, distinct_token_sequences, max_tokens=32, progress=False)
    at_bos = head_table(frame, "sink_score_mean", 0)
    assert at_bos[PLANTED_HEADS["bos"]] > 0.999
    # the previous-token head gives position 0 only the attention of queries 0 and 1: 2/T of the mean
    lengths = [len(s) for s in distinct_token_sequences]
    expected_prev = sum(2 / n for n in lengths) / len(lengths)
    assert abs(at_bos[PLANTED_HEADS["previous_token"]] - expected_prev) < 1e-3
    assert at_bos[PLANTED_HEADS["self"]] < 1.5 / min(lengths)
    # without a delimiter in the input, the delimiter head rests on BOS as well
    sinks = {head for head, value in at_bos.items() if value > 0.5}
    assert sinks == {PLANTED_HEADS["bos"], PLANTED_HEADS["delimiter"]}
    # sink rate at position 0: exactly those two heads in every example are above 0.3 -> 2 of 8 heads
    rate = frame[(frame["metric"] == "sink_rate") & (frame["position"] == 0)]["value"].item()
    assert abs(rate - 200.0 / 8) < 1e-9


def test_planted_role_scores_find_exactly_the_planted_heads(planted, distinct_token_sequences):
    tokens = torch.tensor([s for s in distinct_token_sequences if len(s) == 21])  # block length 10
    induction = induction_scores(planted, tokens, block_length=10)
    previous = previous_token_scores(planted, tokens)
    assert induction[PLANTED_HEADS["induction"]] > 0.999
    assert previous[PLANTED_HEADS["previous_token"]] > 0.999
    induction[PLANTED_HEADS["induction"]] = 0
    previous[PLANTED_HEADS["previous_token"]] = 0
    assert induction.max() < 0.2 and previous.max() < 0.2
    # and the planted circuit actually predicts the repeated half
    logits = planted.bridge(tokens)
    assert (logits[:, 11:-1].argmax(-1) == tokens[:, 12:]).all()


def test_streaming_sink_scores_equal_full_cache(planted, distinct_token_sequences):
    dataset = planted.tokenize_dataset(distinct_token_sequences)
    streamed = run_sinks(planted, distinct_token_sequences, max_tokens=32, batch_size=3, progress=False)
    cache = Recorder(planted, batch_size=1, progress=False).cache(dataset, ["pattern"])
    for example, sequence in enumerate(distinct_token_sequences):
        n = len(sequence)
        for layer in range(planted.n_layers):
            full = sink_scores(cache[f"blocks.{layer}.attn.hook_pattern"][example:example + 1, :, :n, :n])[0]
            rows = streamed[(streamed["metric"] == "sink_score") & (streamed["example"] == f"ex{example}")
                            & (streamed["layer"] == layer)].sort_values(["head", "position"])
            assert torch.allclose(torch.tensor(rows["value"].to_numpy()).view(planted.n_heads, n), full, atol=1e-6)


def test_trained_toy_model_has_induction_heads():
    model = load_model("toy-induction")
    tokens = repeated_random_tokens(16, 12, 256, seed=123, bos=0)
    scores = induction_scores(model, tokens, block_length=12)
    assert scores[1].max() > 0.5  # layer 1 holds the induction heads
    assert scores[0].max() < 0.3  # layer 0 cannot do induction alone
    with torch.no_grad():
        logits = model.bridge(tokens)
    repeat_loss = torch.nn.functional.cross_entropy(logits[:, 13:-1].reshape(-1, 256), tokens[:, 14:].reshape(-1))
    assert repeat_loss < 1.0  # vs ~5.5 nats of chance
