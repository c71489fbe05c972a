"""Circuit discovery: ground truth on a planted circuit, agreement of attribution and activation
patching, overlap statistics, pair-task generation, CLI and notebook."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mechbench.analyses import circuits as C
from mechbench.core import patching as P
from mechbench.errors import DatasetError
from mechbench.tasks import circuit_tasks as T

PREV, INDUCTION = P.head(0, 1), P.head(1, 0)
CIRCUIT = {PREV, INDUCTION}


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def soft_planted():
    """toy-planted with its previous-token (0.1) and induction (1.0) heads softened (logit gap 4 instead
    of 30) so gradients through their attention are not vanishingly small. Known circuit: 0.1 writes
    the previous token, 1.0 keys on it (K-composition) and copies the next token to the logits; no
    other head writes anything."""
    from mechbench.models.loading import wrap_bridge
    from mechbench.models.toy import PLANTED_CTX, PLANTED_GAP, planted_bridge

    bridge = planted_bridge()
    state = bridge.state_dict()
    for layer, index in ((0, 1), (1, 0)):
        state[f"blocks.{layer}.attn.q.weight"][index * PLANTED_CTX:(index + 1) * PLANTED_CTX] *= 4.0 / PLANTED_GAP
    bridge.load_state_dict(state)
    return wrap_bridge(bridge, "toy-planted-soft")


@pytest.fixture(scope="module")
def planted_pairs(soft_planted):
    return T.tokenize_pairs(soft_planted, T.make_task(soft_planted, "induction", n=8, seed=0))


def top(nodes, scores, k=2):
    order = sorted(range(len(nodes)), key=lambda i: -abs(float(scores[i])))
    return [nodes[i] for i in order[:k]]


def others_max(nodes, scores, members):
    return max(abs(float(s)) for n, s in zip(nodes, scores, strict=True) if n not in members)


# ---------------------------------------------------------------------------- ground truth
def test_planted_task_behaviour(soft_planted, planted_pairs):
    base = C.baseline(soft_planted, planted_pairs, [])
    assert float(base["clean"].mean()) > 0.5 and float(base["corrupt"].mean()) < -0.5
    assert bool(base["top1"].all())


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_activation_patching_ranks_planted_circuit(soft_planted, planted_pairs, direction):
    nodes = P.model_nodes(soft_planted)
    scores = C.activation_patching(soft_planted, planted_pairs, nodes, direction)
    assert set(top(nodes, scores)) == CIRCUIT
    assert others_max(nodes, scores, CIRCUIT) < 1e-6
    # each circuit head alone carries (nearly) the whole effect: -1 when noised, +1 when restored
    sign = -1.0 if direction == "noising" else 1.0
    for node in CIRCUIT:
        assert sign * float(scores[nodes.index(node)]) > 0.8


def test_attribution_patching_ranks_planted_circuit(soft_planted, planted_pairs):
    nodes = P.model_nodes(soft_planted)
    scores = C.attribution_patching(soft_planted, planted_pairs, nodes)
    assert set(top(nodes, scores)) == CIRCUIT
    assert others_max(nodes, scores, CIRCUIT) < 1e-6


def test_dla_finds_the_head_that_writes_the_answer(soft_planted, planted_pairs):
    nodes = P.model_nodes(soft_planted)
    scores = C.direct_logit_attributions(soft_planted, planted_pairs, nodes)
    # only the induction head writes to the block the unembedding reads; the previous-token head acts
    # through K-composition (indirectly), so its *direct* effect is zero by construction
    assert top(nodes, scores, 1) == [INDUCTION]
    assert abs(float(scores[nodes.index(PREV)])) < 1e-6
    clean = float(C.baseline(soft_planted, planted_pairs, [])["clean"].mean())
    assert float(scores[nodes.index(INDUCTION)]) == pytest.approx(clean, rel=1e-4)


def test_path_patching_recovers_the_sender_receiver_edge(soft_planted, planted_pairs):
    stages = C.path_patching_stages(soft_planted, planted_pairs, n_stages=2, rule="top_k", value=1)
    assert stages[0]["chosen"] == [INDUCTION]
    assert stages[1]["chosen"] == [PREV]
    assert stages[1]["receivers"] == [(1, 0, "q"), (1, 0, "k"), (1, 0, "v")]
    # through the induction head's keys alone the path carries the effect; through its queries, none
    senders = P.model_nodes(soft_planted)[:4]
    via_k = C.path_patching_scores(soft_planted, planted_pairs, senders, [(1, 0, "k")])
    via_q = C.path_patching_scores(soft_planted, planted_pairs, senders, [(1, 0, "q")])
    assert float(via_k[1]) < -0.8 and abs(float(via_q[1])) < 1e-6
    assert max(abs(float(v)) for i, v in enumerate(via_k) if i != 1) < 1e-6


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_edge_attribution_recovers_the_planted_edges(soft_planted, planted_pairs, method):
    scores = C.edge_attribution(soft_planted, planted_pairs, method, steps=4)
    up, down = C.upstream_labels(soft_planted), C.downstream_labels(soft_planted)
    table = {(u, d): float(scores[i, j]) for i, u in enumerate(up) for j, d in enumerate(down)
             if not math.isnan(float(scores[i, j]))}
    # the three edges of the planted circuit: token → previous-token head's values, previous-token head →
    # induction head's keys (K-composition), induction head → logits; every other edge scores (nearly) 0
    best = C.select_top(table, "top_k", 3)
    assert set(best) == {("input", "L0H1.v"), ("L0H1", "L1H0.k"), ("L1H0", "logits")}
    assert abs(table[("L0H1", "L1H0.k")]) > 0.5 and abs(table[("L0H1", "L1H0.q")]) < 1e-6
    assert max(abs(v) for key, v in table.items() if key not in best) < 0.15
    assert C.edge_nodes(best) == {"L0H1", "L1H0"}
    assert not C.edge_mask(soft_planted)[up.index("L1H0"), down.index("L0H1.q")]


def test_faithfulness_of_the_planted_circuit(soft_planted, planted_pairs):
    nodes = P.model_nodes(soft_planted)
    full = float(C.baseline(soft_planted, planted_pairs, [])["clean"].mean())
    kept = C.ablated_logit_diff(soft_planted, planted_pairs, CIRCUIT, nodes, "mean")
    empty = C.ablated_logit_diff(soft_planted, planted_pairs, [], nodes, "mean")
    scores = C.faithfulness(kept, full, empty)
    assert scores["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert abs(empty) < 0.5 * full
    only_induction = C.ablated_logit_diff(soft_planted, planted_pairs, [INDUCTION], nodes, "mean")
    assert C.faithfulness(only_induction, full, empty)["faithfulness_normalised"] < 0.6


# ---------------------------------------------------------------------------- trained toy model
@pytest.fixture(scope="module")
def induction_model():
    from mechbench.models.loading import load_model

    return load_model("toy-induction")


def test_attribution_agrees_with_activation_patching(induction_model):
    pairs = T.tokenize_pairs(induction_model, T.make_task(induction_model, "induction", n=16, seed=1))
    nodes = P.model_nodes(induction_model)
    exact = C.activation_patching(induction_model, pairs, nodes, "noising")
    approx = C.attribution_patching(induction_model, pairs, nodes)
    pearson = torch.corrcoef(torch.stack([exact, approx]))[0, 1]
    # measured 0.80: first order holds for the induction heads (L1) and the small heads; the previous-token
    # head L0H3 is underestimated (-0.28 vs -0.98) because its effect passes through a saturating softmax
    assert pearson > 0.7
    assert set(top(nodes, exact, 2)) == set(top(nodes, approx, 2)) == {P.head(0, 3), P.head(1, 0)}
    assert all(float(e) * float(a) >= 0 for e, a in zip(exact, approx, strict=True) if abs(float(e)) > 0.1)


# ---------------------------------------------------------------------------- pure functions
def test_normalised_patching_conventions():
    assert float(C.normalised_patching(3.0, 3.0, -1.0, "noising")) == 0.0
    assert float(C.normalised_patching(-1.0, 3.0, -1.0, "noising")) == -1.0
    assert float(C.normalised_patching(-1.0, 3.0, -1.0, "denoising")) == 0.0
    assert float(C.normalised_patching(3.0, 3.0, -1.0, "denoising")) == 1.0
    assert float(C.normalised_patching(1.0, 3.0, -1.0, "denoising")) == 0.5
    with pytest.raises(ValueError, match="direction"):
        C.normalised_patching(1.0, 2.0, 0.0, "sideways")


def test_select_top_rules():
    scores = {"a": 0.5, "b": -0.9, "c": 0.1, "d": float("nan"), "e": 0.3}
    assert C.select_top(scores, "top_k", 2) == ["b", "a"]
    assert C.select_top(scores, "top_k", 2, signed=True) == ["a", "e"]
    assert C.select_top(scores, "top_p", 25) == ["b"]  # ceil(0.25 x 4 scored items) = 1
    assert C.select_top(scores, "top_p", 50) == ["b", "a"]
    assert C.select_top(scores, "threshold", 0.3) == ["b", "a", "e"]


def test_overlap_formulas_on_hand_made_sets():
    a, b = {"L1H0", "L2H3", "L3H1", "L4H4"}, {"L2H3", "L3H1"}
    assert C.overlap(a, b) == {"overlap_a": 0.5, "overlap_b": 1.0, "jaccard": 0.5}
    assert C.overlap({1, 2, 3}, {4, 5}) == {"overlap_a": 0.0, "overlap_b": 0.0, "jaccard": 0.0}
    assert all(math.isnan(v) for v in C.overlap(set(), set()).values())


def test_permutation_baseline():
    universe = list(range(100))
    same = C.overlap_permutation_test(set(range(10)), set(range(10)), universe, n_permutations=500, seed=0)
    assert same["jaccard"]["observed"] == 1.0
    assert same["jaccard"]["p_value"] == pytest.approx(1 / 501)
    # random sets of 10 and 20 out of 100 share |B|/N = 20 % of A on average
    assert same["overlap_a"]["expected"] == 0.1
    chance = C.overlap_permutation_test(set(range(10)), set(range(5, 25)), universe, n_permutations=2000, seed=1)
    assert chance["overlap_a"]["expected"] == pytest.approx(0.2)
    assert chance["overlap_a"]["baseline"] == pytest.approx(0.2, abs=0.01)
    assert chance["overlap_a"]["observed"] == 0.5 and chance["overlap_a"]["p_value"] < 0.05
    disjoint = C.overlap_permutation_test({0, 1}, {2, 3}, universe, n_permutations=200, seed=0)
    assert disjoint["jaccard"]["p_value"] == 1.0
    with pytest.raises(ValueError, match="not in the universe"):
        C.overlap_permutation_test({1000}, {1}, universe, 10)


def test_faithfulness_formula():
    assert C.faithfulness(2.0, 4.0, 0.0) == {"faithfulness": 0.5, "faithfulness_normalised": 0.5}
    assert C.faithfulness(3.0, 4.0, 2.0)["faithfulness_normalised"] == 0.5


def test_logit_diff_reads_each_examples_end():
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 2], logits[0, 1, 4] = 3.0, 1.0
    logits[1, 2, 2], logits[1, 2, 4] = -1.0, 1.0
    ld = C.logit_diff(logits, torch.tensor([1, 2]), torch.tensor([2, 2]), torch.tensor([4, 4]))
    assert ld.tolist() == [2.0, -2.0]


# ---------------------------------------------------------------------------- tasks
class WordModel:
    """Just enough of a HookedModel for the generators: a word vocabulary, one token per known word."""

    name = "word-model"

    def __init__(self, vocabulary):
        self.vocabulary = set(vocabulary)

    def tokenize(self, text, prepend_bos=None):
        ids = []
        for word in text.split(" "):
            if not word:
                continue
            ids += [hash(word) % 1000] if word in self.vocabulary else [1, 2]
        return torch.tensor(ids), []


def test_ioi_generation_is_deterministic_and_single_token():
    known = ["Mary", "John", "Alice", "Bob", "James", "Sarah", "Emma"]
    model = WordModel(known)
    first, again = T.ioi_task(model, n=12, seed=3), T.ioi_task(model, n=12, seed=3)
    assert first == again and T.ioi_task(model, n=12, seed=4) != first
    for clean, corrupt, answer, wrong in zip(first.clean, first.corrupt, first.answer, first.wrong, strict=True):
        assert answer.strip() in known and wrong.strip() in known and answer != wrong
        assert answer.strip() in clean and clean.count(wrong.strip()) == 2  # S is repeated, IO is not
        assert answer.strip() not in corrupt  # ABC: all names replaced
    names = {w.strip(",.") for text in first.clean + first.corrupt for w in text.split() if w.strip(",.") in
             T.IOI_NAMES}
    assert names <= set(known)
    with pytest.raises(DatasetError, match=r"only 3 IOI names are single tokens for word-model \(need 6\)") as info:
        T.ioi_task(WordModel(known[:3]), n=4)
    assert "\n" not in str(info.value)


def test_colored_objects_generation():
    colors = ["red", "Red", "blue", "Blue", "green", "Green", "pink", "Pink", "gold"]  # gold has no " Gold"
    objects = ["book", "cup", "pen", "hat"]
    task = T.colored_objects_task(WordModel(colors + objects), n=6, seed=0)
    assert task == T.colored_objects_task(WordModel(colors + objects), n=6, seed=0)
    for clean, corrupt, answer, wrong in zip(task.clean, task.corrupt, task.answer, task.wrong, strict=True):
        assert answer != wrong and answer.strip() in {"Red", "Blue", "Green", "Pink"}
        assert "gold" not in clean and clean.count("\nA:") == 2
        differing = [(a, b) for a, b in zip(clean.split(" "), corrupt.split(" "), strict=True) if a != b]
        assert len(differing) == 1  # mindiff: only the object asked about changes
        asked = differing[0][0].rstrip("?\nA:")
        assert f"{answer.strip().lower()} {asked}" in clean.split("\nQ:")[-1]
    with pytest.raises(DatasetError, match="colours are single tokens"):
        T.colored_objects_task(WordModel(["red", "Red", *objects]), n=2)


def test_induction_pairs():
    task = T.induction_task(vocab_size=16, n=20, block_length=6, seed=0)
    assert task == T.induction_task(vocab_size=16, n=20, block_length=6, seed=0)
    for clean, corrupt, answer, wrong in zip(task.clean, task.corrupt, task.answer, task.wrong, strict=True):
        assert len(clean) == len(corrupt) and clean[0] == corrupt[0] == 0
        block, query = clean[1:7], clean[-1]
        assert answer == block[block.index(query) + 1]
        moved = corrupt[1:7]
        assert wrong == moved[moved.index(query) + 1] and wrong != answer
        assert clean[7:] == corrupt[7:]


def test_user_pairs_and_alignment(tmp_path, tiny_llama):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "p0", "clean": "the cat sat on the", "corrupt": "the dog sat on the", "answer": " mat",
         "wrong": " house"},
        {"clean": "a cat ran", "corrupt": "a dog ran", "answer": " to", "wrong": " home"}]))
    task = T.load_pair_file(str(path))
    assert task.name == "pairs" and task.example_ids == ["p0", "pair1"]
    pairs = T.tokenize_pairs(tiny_llama, task)
    assert pairs.clean.shape == pairs.corrupt.shape and pairs.end.tolist() == [5, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "the cat sat", "corrupt": "the cat", "answer": " on", "wrong": " to"}))
    with pytest.raises(DatasetError, match="4 and 3 tokens"):
        T.tokenize_pairs(tiny_llama, T.load_pair_file(str(bad)))
    with pytest.raises(DatasetError, match="not found"):
        T.load_pair_file(str(tmp_path / "absent.jsonl"))


def test_gqa_model_runs_every_method(tiny_llama, tmp_path):
    task = T.PairTask("t", ["a", "b"], ["the cat sat on the", "a dog ran to the"], ["the dog sat on the",
                      "a cat ran to the"], [" mat", " house"], [" house", " mat"])
    pairs = T.tokenize_pairs(tiny_llama, task)
    config = C.CircuitsConfig(tasks=["x"], n_examples=2, stages=2, rule="top_k", rule_value=2, ig_steps=2,
                              n_permutations=10)
    frame = C.run_circuits(tiny_llama, [pairs], config, progress=False)
    nodes = frame[frame["metric"] == "act_patch_noising"]
    assert len(nodes) == 2 * (4 + 1)  # 4 heads + 1 MLP per layer
    edges = frame[frame["metric"] == "eap"]
    assert len(edges) == int(C.edge_mask(tiny_llama).sum()) and edges["value"].notna().all()
    assert frame[frame["metric"] == "faithfulness"]["circuit_size"].iloc[0] >= 2


# ---------------------------------------------------------------------------- CLI and notebook
def test_check_config_errors():
    from mechbench.errors import ConfigError

    with pytest.raises(ConfigError, match="percentage"):
        C.check_config(C.CircuitsConfig(rule_value=150))
    with pytest.raises(DatasetError, match="not found"):
        C.check_config(C.CircuitsConfig(tasks=["missing.jsonl"]))
    with pytest.raises(ValueError, match="circuit_method"):
        C.CircuitsConfig(methods=["dla"])


def test_cli_writes_circuit_rows_and_the_notebook_plots_them(tmp_path, run_notebook):
    from typer.testing import CliRunner

    from mechbench.cli import app
    from mechbench.store.result_store import ResultStore

    user = tmp_path / "copy.jsonl"
    user.write_text("\n".join(json.dumps({"clean": [0, 3, 5, 7, 9, 3], "corrupt": [0, 5, 3, 7, 9, 3],
                                          "answer": 5, "wrong": 7}) for _ in range(2)))
    config = tmp_path / "circuits.yaml"
    config.write_text(f"model: toy-planted\nstore: {tmp_path / 'store'}\nanalyses:\n  circuits:\n"
                      f"    tasks: [induction, {user}]\n    n_examples: 4\n    stages: 2\n    rule: top_k\n"
                      "    rule_value: 1\n    ig_steps: 2\n    n_permutations: 50\n")
    result = CliRunner().invoke(app, ["analyze", "circuits", "--config", str(config), "--run-id", "c1"])
    assert result.exit_code == 0, result.output
    frame = ResultStore(tmp_path / "store").read(analysis="circuits")
    assert {"act_patch_noising", "attr_patch", "dla", "path_patch", "eap", "eap_ig", "faithfulness",
            "overlap_a", "jaccard"} <= set(frame["metric"])
    assert set(frame["task"].dropna()) >= {"induction", "copy", "induction|copy"}
    circuit = frame[(frame["metric"] == "in_circuit") & (frame["task"] == "induction")]
    assert set(circuit["node"]) == {"L1H0", "L0H1"}

    figures = run_notebook("circuit_overlap.ipynb", tmp_path / "store")
    assert run_notebook.namespace["run_id"] == "c1"  # the stored run, not the notebook's demo run
    assert len(figures) >= 3 and all(len(figure.data) > 0 for figure in figures)


# ---------------------------------------------------------------------------- faithfulness curves
def test_curve_sizes_and_the_smallest_faithful_size():
    assert C.curve_sizes(1000, 4) == [1, 10, 100, 1000]
    assert C.curve_sizes(5, 12) == [1, 2, 3, 4, 5]
    assert C.curve_sizes(7, 2) == [1, 7] and C.curve_sizes(1, 5) == [1] and C.curve_sizes(0, 5) == []
    assert C.smallest_faithful([1, 2, 4, 8], [0.1, 0.5, 0.9, 1.0], 0.8) == (4, True)
    assert C.smallest_faithful([1, 2, 4, 8], [0.1, 0.7, 0.6, 0.7], 0.8) == (2, False)  # the most faithful, smallest
    assert C.smallest_faithful([1, 2], [float("nan")] * 2, 0.5) == (2, False)


@pytest.mark.parametrize("method", ["eap", "attribution_patching"])
def test_circuit_at_a_stated_faithfulness_is_the_planted_circuit(soft_planted, planted_pairs, method):
    """The curve ranks the planted circuit's edges (or nodes) first: one item does not carry the behaviour,
    the planted pair does, fully; so the target picks exactly that circuit."""
    config = C.CircuitsConfig(tasks=["induction"], methods=[method], circuit_method=method,
                              faithfulness_target=0.99, curve_points=8, n_permutations=10)
    frame = C.run_circuits(soft_planted, [planted_pairs], config, progress=False)
    curve = frame[frame["metric"] == "faithfulness_curve"].sort_values("circuit_size")
    assert curve["circuit_size"].is_monotonic_increasing and curve["n_nodes"].is_monotonic_increasing
    assert float(curve["value"].iloc[0]) < 0.6  # the top item alone (one node)
    members = set(frame.loc[frame["metric"] == "in_circuit", "node"])
    assert members == {n.label for n in CIRCUIT}
    chosen = frame[frame["metric"] == "faithfulness_normalised"]
    assert float(chosen["value"].iloc[0]) == pytest.approx(1.0, abs=1e-5)
    assert bool(chosen["target_reached"].iloc[0]) and float(chosen["faithfulness_target"].iloc[0]) == 0.99
    smallest = curve[curve["value"] >= 0.99]["circuit_size"].min()
    assert int(curve.loc[curve["circuit_size"] == smallest, "n_nodes"].iloc[0]) == 2


def test_a_curve_needs_a_ranking_method():
    with pytest.raises(ValueError, match="faithfulness curve needs one ranking"):
        C.CircuitsConfig(methods=["path_patching"], circuit_method="path_patching", faithfulness_curve=True)
