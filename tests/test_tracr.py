"""Compiled RASP programs (tracr) as ground truth: the loaded model computes what tracr's own forward does,
its attention equals tracr's, and mechbench's head roles, sink scores and activation patching find exactly
the heads the program put there."""

from __future__ import annotations

import pytest
import torch
from tracr.compiler import compiling, lib  # tracr-pypi, a dev dependency (pyproject.toml)
from tracr.rasp import rasp

from mechbench.analyses import circuits as C
from mechbench.analyses.head_roles import previous_token_scores
from mechbench.analyses.sinks import run_sinks
from mechbench.core import patching as P
from mechbench.core.recorder import Recorder
from mechbench.tasks.circuit_tasks import PairTokens

VOCAB = {"a", "b", "c"}
SEQUENCES = [["BOS", "a", "b", "a", "c"], ["BOS", "c", "c", "b", "a"], ["BOS", "b", "a", "c", "c"],
             ["BOS", "a", "a", "a", "b"]]


def compile_program(program, causal: bool = True):
    return compiling.compile_rasp_to_model(program, vocab=VOCAB, max_seq_len=6, compiler_bos="BOS", causal=causal)


def previous_and_first_program():
    """Two heads in one layer: one copies the previous token, one the first token after BOS; an MLP
    compares them (the previous token where they agree, else "c")."""
    previous = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + 1),
                                               rasp.tokens, default=None))
    first = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0),
                                            rasp.tokens, default=None))
    return rasp.categorical(rasp.SequenceMap(lambda x, y: x if x == y else "c", previous, first))


@pytest.fixture(scope="module")
def two_heads():
    from mechbench.models.tracr import tracr_model

    program = previous_and_first_program()
    assembled = compile_program(program)
    return assembled, tracr_model(assembled, "tracr-previous-first", program.label)


def tracr_patterns(assembled, sequence):
    """tracr's own attention (softmax of its attention logits) of layer 0: ``[head, q, k]``."""
    return torch.tensor(assembled.apply(sequence).attn_logits[0][0].tolist()).softmax(-1)


def layer_0_pattern(model, token_ids):
    """mechbench's recorded attention of layer 0 for one sequence: ``[head, q, k]``."""
    patterns = {}
    Recorder(model, batch_size=1, progress=False).run(
        model.tokenize_dataset([token_ids.tolist()]),
        {"pattern": lambda layer, pattern, batch: patterns.setdefault(layer, pattern[0])})
    return patterns[0]


def head_roles_from_tracr(assembled):
    """Which compiled head is which, read off tracr's own attention: the previous-token head puts its mass on
    ``q - 1``, the first-token head on position 1."""
    pattern = tracr_patterns(assembled, SEQUENCES[0])
    previous = int(pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1).argmax())
    return previous, 1 - previous


@pytest.mark.parametrize("program", ["previous", "histogram"])
def test_the_loaded_model_computes_the_program(program):
    from mechbench.models.tracr import tracr_model, tracr_output_ids, tracr_token_ids

    expression = previous_and_first_program() if program == "previous" else lib.make_hist()
    assembled = compile_program(expression, causal=program == "previous")
    model = tracr_model(assembled, f"tracr-{program}", expression.label)
    decode = {index: value for value, index in tracr_output_ids(assembled).items()}
    columns = [assembled.residual_labels.index(f"{expression.label}:{decode[i]}") for i in sorted(decode)]
    for sequence in SEQUENCES:
        logits = model.bridge(tracr_token_ids(assembled, sequence)[None])[0]
        output = assembled.apply(sequence)
        # the output read off tracr's own final residual, every position (BOS included), to float precision
        theirs = torch.tensor(output.transformer_output.tolist())[0][:, columns]
        torch.testing.assert_close(logits, theirs, atol=1e-4, rtol=1e-4)
        # decoded, where the program's selector matches a real token (the previous token of position 1 is BOS:
        # an all-zero output there, whose argmax is a tie)
        first = 2 if program == "previous" else 1
        assert [decode[int(i)] for i in logits.argmax(-1)][first:] == output.decoded[first:]
        torch.testing.assert_close(layer_0_pattern(model, tracr_token_ids(assembled, sequence)),
                                   tracr_patterns(assembled, sequence), atol=1e-4, rtol=1e-4)


def test_head_roles_and_sinks_find_the_compiled_heads(two_heads):
    from mechbench.models.tracr import tracr_token_ids

    assembled, model = two_heads
    previous_head, first_head = head_roles_from_tracr(assembled)
    tokens = torch.stack([tracr_token_ids(assembled, s) for s in SEQUENCES])
    previous = previous_token_scores(model, tokens)
    assert float(previous[0, previous_head]) > 0.99 and float(previous[0, first_head]) < 0.5
    rows = run_sinks(model, [s.tolist() for s in tokens], max_tokens=8, progress=False)
    at_first = rows[(rows["metric"] == "sink_score_mean") & (rows["position"] == 1)].set_index("head")["value"]
    assert float(at_first[first_head]) > 0.99 and float(at_first[previous_head]) < 0.5


def test_activation_patching_puts_exactly_the_previous_token_head_and_the_mlp_in_the_circuit(two_heads):
    """Corrupting only the previous token flips the output through the previous-token head and the MLP that
    compares; the first-token head reads the same token on both prompts, so patching it changes nothing."""
    from mechbench.models.tracr import tracr_output_ids, tracr_token_ids

    assembled, model = two_heads
    previous_head, first_head = head_roles_from_tracr(assembled)
    clean = [["BOS", "a", "a", "b", "a"], ["BOS", "b", "b", "a", "b"], ["BOS", "a", "c", "b", "a"]]
    corrupt = [["BOS", "a", "a", "a", "a"], ["BOS", "b", "b", "b", "b"], ["BOS", "a", "c", "a", "a"]]
    out = tracr_output_ids(assembled)
    answers = [assembled.apply(s).decoded[-1] for s in clean]
    wrongs = [assembled.apply(s).decoded[-1] for s in corrupt]
    assert answers == ["c", "c", "c"] and wrongs == ["a", "b", "a"]
    pairs = PairTokens("previous", ["0", "1", "2"], torch.stack([tracr_token_ids(assembled, s) for s in clean]),
                       torch.stack([tracr_token_ids(assembled, s) for s in corrupt]),
                       torch.tensor([out[a] for a in answers]), torch.tensor([out[w] for w in wrongs]),
                       torch.full((3,), 4))
    nodes = P.model_nodes(model)
    scores = dict(zip(nodes, C.activation_patching(model, pairs, nodes, "noising").tolist(), strict=True))
    assert scores[P.head(0, previous_head)] == pytest.approx(-1.0, abs=1e-3)
    assert scores[P.mlp(0)] == pytest.approx(-1.0, abs=1e-3)
    assert scores[P.head(0, first_head)] == pytest.approx(0.0, abs=1e-6)
