"""Attention vs attribution (issue 8): agreement statistics on hand-built vectors, IG completeness, occlusion of an
unseen token, a planted head against occlusion, the runner's rows, CLI + notebook.

Ground truth on toy-planted: the previous-token head 0.1 writes the one-hot of token ``t - 1`` into the residual
"previous token" block at ``t`` with attention ``A[t, t-1] ≈ 1`` (``1 - O(e^-30)``) and its query/key read only
position dims, so replacing token ``s`` by the zero embedding removes exactly ``sum_{t in Q} A[t, s]`` from the sum
of that block over the rows ``Q``: occlusion of that readout equals the head's attention view (times ``|Q|``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mechbench.analyses.attribution import (
    AttributionConfig,
    Example,
    Perturber,
    Target,
    ViewReducer,
    attention_rollout,
    build_example,
    check_config,
    converged_integrated_gradients,
    curve_area,
    curve_points,
    drop_occlusion,
    embedding_forward,
    grounding_examples,
    grounding_shares,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    perturbation_curve,
    replacement_embeddings,
    run_attribution,
    saliency,
    target_values,
)
from mechbench.config import parse_config
from mechbench.core.dataset import TokenDataset
from mechbench.core.embeddings import frozen_parameters, run_from_embeddings, token_embeddings
from mechbench.core.pooling import pool_segments, pool_to_length
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError, DatasetError
from mechbench.models.toy import PLANTED_HEADS, PLANTED_VOCAB
from mechbench.stats import pearson, rankdata, spearman, topk_overlap
from mechbench.tasks.grounding import GroundedItem, load_grounded, load_target_prompts

#: IG completeness tolerance on toy-planted with 32 Gauss-Legendre points (measured |delta| ~ 5e-7)
IG_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------- agreement
def test_correlations_match_numpy_and_pandas():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 17, generator=generator, dtype=torch.float64)
    y = torch.randn(17, generator=generator, dtype=torch.float64) + 0.5 * x[0]
    x[2, 3:7] = 1.0  # ties
    x[3] = torch.round(x[3])
    ours_p, ours_s = pearson(x, y), spearman(x, y)
    for row in range(5):
        assert float(ours_p[row]) == pytest.approx(np.corrcoef(x[row].numpy(), y.numpy())[0, 1], abs=1e-12)
        frame = pd.DataFrame({"x": x[row].numpy(), "y": y.numpy()})
        assert float(ours_s[row]) == pytest.approx(frame.corr(method="spearman").loc["x", "y"], abs=1e-12)
    assert rankdata(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert torch.isnan(pearson(torch.ones(4), torch.arange(4.0)))  # constant side: undefined
    assert float(spearman(torch.arange(6.0), torch.arange(6.0) ** 3)) == pytest.approx(1.0)
    assert topk_overlap(torch.tensor([5.0, 4, 3, 2, 1]), torch.tensor([1.0, 4, 5, 2, 3]), 2).item() == 0.5
    assert topk_overlap(torch.tensor([5.0, 4]), torch.tensor([4.0, 5]), 10).item() == 1.0  # k capped at n


def test_pooling_rollout_and_shares():
    values = torch.tensor([[1.0, 5.0, 2.0, 0.0, 3.0, 4.0]])
    segments = torch.tensor([0, 0, 1, -1, 1, 2])
    assert pool_segments(values, segments, "max").tolist() == [[5.0, 3.0, 4.0]]
    assert pool_segments(values, segments, "mean").tolist() == [[3.0, 2.5, 4.0]]
    assert pool_to_length(values, 3, "max").tolist() == [[5.0, 2.0, 4.0]]
    assert pool_to_length(values, 2, "mean").tolist() == [[8 / 3, 7 / 3]]
    assert grounding_shares(torch.tensor([9.0, 1, 1, 2, 0, 4]), [(1, 3), (3, 4), (5, 6)]).tolist() == pytest.approx(
        [0.25, 0.25, 0.5])  # position 0 is in no passage
    maps = torch.softmax(torch.randn(3, 5, 5).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf")), -1)
    rollout = attention_rollout(maps.double())
    assert torch.allclose(rollout.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    eye = torch.eye(5, dtype=torch.float64)
    expected = (0.5 * maps[2] + 0.5 * eye) @ (0.5 * maps[1] + 0.5 * eye) @ (0.5 * maps[0] + 0.5 * eye)
    assert torch.allclose(rollout[-1], expected.double())


def test_deletion_and_insertion_curves_invariants():
    weights = torch.tensor([0.0, 3.0, 1.0, 2.0, 5.0, 0.5, 4.0])  # f = sum of the weights of the kept positions

    def evaluate(removed: torch.Tensor) -> torch.Tensor:
        return (weights * ~removed).sum(-1)

    positions = torch.arange(1, 7)  # position 0 left out, as with exclude_first
    best = torch.argsort(weights[positions], descending=True)
    worst = best.flip(0)
    assert curve_points(6, 3) == [0, 2, 4, 6] and curve_points(2, 10) == [0, 1, 2]
    curves = {}
    shuffled = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    for name, order in (("best", best), ("worst", worst), ("random", shuffled)):
        for mode in ("deletion", "insertion"):
            fractions, values = perturbation_curve(evaluate, positions, order, 6, mode, 7)
            assert fractions.tolist() == pytest.approx([k / 6 for k in range(7)])
            full, empty = float(weights.sum()), float(weights[0])  # position 0 is never removed
            ends = (float(values[0]), float(values[-1]))
            assert ends == ((full, empty) if mode == "deletion" else (empty, full))
            curves[name, mode] = values
    assert (curves["best", "deletion"].diff() <= 0).all()  # removing positive weights only lowers f
    assert curves["best", "deletion"].tolist() == [15.5, 10.5, 6.5, 3.5, 1.5, 0.5, 0.0]
    auc = {key: curve_area(torch.linspace(0, 1, 7, dtype=torch.float64), v) for key, v in curves.items()}
    assert auc["best", "deletion"] < auc["random", "deletion"] < auc["worst", "deletion"]
    assert auc["best", "insertion"] > auc["random", "insertion"] > auc["worst", "insertion"]


# ---------------------------------------------------------------------------------------------- methods
def test_integrated_gradients_completeness_and_methods(tiny_llama):
    examples = [build_example(tiny_llama, "a", "the cat sat on the mat .", " the dog", "span"),
                build_example(tiny_llama, "b", "one two three four", " five", "next_token")]
    n = examples[0].tokens.numel()  # 10; the second example has 6 tokens and 4 pads
    tokens = torch.full((2, n), tiny_llama.pad_id)
    tokens[0], tokens[1, :6] = examples[0].tokens, examples[1].tokens
    targets = [e.target for e in examples]
    with frozen_parameters(tiny_llama):
        embeddings = token_embeddings(tiny_llama, tokens)
        forward = embedding_forward(tiny_llama, tokens, targets)
        with torch.no_grad():
            value = forward(embeddings)
            logits = tiny_llama.bridge(tokens)
        assert torch.allclose(value, target_values(logits, targets), atol=1e-5)  # embedding swap = ordinary forward
        baseline = replacement_embeddings(tiny_llama, tokens, embeddings, "pad")
        baseline[1, 6:] = embeddings[1, 6:]  # pads: baseline = input
        scores, delta = integrated_gradients(forward, embeddings, baseline, n_steps=32)
        with torch.no_grad():
            gap = value - forward(baseline)
        assert torch.allclose(delta, scores.sum(-1) - gap, atol=1e-5)  # captum's delta is the completeness error
        assert gap.abs().min() > 0.01
        # a random-init Llama (RMSNorm) is far from linear along the path: 32 points leave |delta| ~ 0.03-0.07
        # (measured); the toy-planted test below holds the tolerance
        assert (scores[1, 6:] == 0).all()
        coarse = integrated_gradients(forward, embeddings, baseline, n_steps=2)[1]
        assert coarse.abs().max() > delta.abs().max()  # fewer steps, larger error
        gradient = saliency(forward, embeddings)
        assert (gradient >= 0).all() and gradient.shape == (2, n)
        ixg = input_x_gradient(forward, embeddings)
        embeddings.requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(embeddings).sum(), embeddings)
        assert torch.allclose(gradient, grad.norm(dim=-1), atol=1e-6)
        assert torch.allclose(ixg, (grad * embeddings).sum(-1), atol=1e-6)


def test_integrated_gradients_completeness_on_planted(planted):
    """IG completeness on toy-planted (no normalisation; 32 Gauss-Legendre points): |delta| < IG_TOLERANCE."""
    tokens = torch.tensor([[0, 3, 5, 7, 9, 3, 5, 7]])  # row 6 (the second 5): the induction head copies the 7
    target = Target((7,), (7,))
    with frozen_parameters(planted):
        embeddings = token_embeddings(planted, tokens)
        forward = embedding_forward(planted, tokens, [target])
        scores, delta = integrated_gradients(forward, embeddings, torch.zeros_like(embeddings), n_steps=32)
        with torch.no_grad():
            gap = forward(embeddings) - forward(torch.zeros_like(embeddings))
    assert abs(float(gap)) > 0.1
    assert abs(float(delta)) < IG_TOLERANCE
    assert float(scores.sum()) == pytest.approx(float(gap), abs=IG_TOLERANCE)
    assert float(scores[0, -1]) == 0.0  # the target token itself is unseen


def test_occluding_a_token_the_target_cannot_see_has_zero_effect(tiny_llama):
    example = build_example(tiny_llama, "a", "the cat sat on the mat .", " it was big", "span")
    n = example.tokens.numel()  # the last target token is input but predicts nothing: positions > last query row
    tokens = example.tokens[None]
    with frozen_parameters(tiny_llama):
        embeddings = token_embeddings(tiny_llama, tokens)
        forward = embedding_forward(tiny_llama, tokens, [example.target])
        for replacement in (torch.zeros_like(embeddings), torch.randn_like(embeddings)):
            effects = occlusion(forward, embeddings, replacement, torch.arange(n)[None])[0]
            assert effects[-1].item() == 0.0  # exactly: causal masking
            assert (effects[:-1] != 0).all()
        assert saliency(forward, embeddings)[0, -1].item() == 0.0
    perturber = Perturber(tiny_llama, example.tokens, example.target, embeddings[0], None)
    dropped = drop_occlusion(perturber, [[1], [2, 3]])
    assert (dropped != 0).all()
    with pytest.raises(ValueError, match="drop removes prompt positions only"):
        drop_occlusion(perturber, [[n - 1]])


def test_planted_previous_token_head_equals_occlusion(planted):
    """Occlusion of a readout the planted previous-token head writes equals that head's attention (r ≈ 1)."""
    tokens = torch.tensor([[0, 3, 5, 7, 9, 11, 2, 4, 6, 8]])
    rows = [3, 5, 6, 8]
    prev_block = slice(PLANTED_VOCAB, 2 * PLANTED_VOCAB)
    kept: list[torch.Tensor] = []

    def forward(embeddings: torch.Tensor) -> torch.Tensor:
        kept.clear()
        hook = ("blocks.1.hook_resid_pre", lambda act, hook: kept.append(act))
        run_from_embeddings(planted, tokens.repeat(embeddings.shape[0], 1), embeddings, hooks=[hook])
        return kept[0][:, rows, prev_block].sum((-1, -2))

    with frozen_parameters(planted), torch.no_grad():
        embeddings = token_embeddings(planted, tokens)
        effects = occlusion(forward, embeddings, torch.zeros_like(embeddings), torch.arange(10)[None])[0].double()
    example = Example("p", tokens[0], Target((4, 6, 7, 9), (9, 2, 4, 8)), [str(t) for t in tokens[0].tolist()])
    reducer = ViewReducer([example], planted.n_layers, planted.n_heads)
    dataset = TokenDataset([tokens[0]], ["p"], [example.token_texts])
    Recorder(planted, batch_size=1, progress=False).run(dataset, {"pattern": reducer})
    views = reducer.views(0)
    assert example.target.query_rows == rows
    previous = views.head[PLANTED_HEADS["previous_token"]]
    assert torch.allclose(effects, len(rows) * previous, atol=1e-6)
    assert effects[[2, 4, 5, 7]].tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert float(pearson(previous, effects)) == pytest.approx(1.0, abs=1e-9)
    assert float(topk_overlap(previous, effects, 4)) == 1.0
    assert float(pearson(views.head[PLANTED_HEADS["self"]], effects)) < 0.2  # a head reading other positions
    assert float(pearson(views.head[PLANTED_HEADS["bos"]], effects)) < 0.0


# ---------------------------------------------------------------------------------------------- runner
GROUNDED = GroundedItem("g", ("the cat sat on the mat .", "the dog ran to the house .", "she saw two red cats ."),
                        "what did the dog do ?", "ran", 1)


def test_runner_rows_on_tiny_llama(tiny_llama):
    config = AttributionConfig(ig_steps=32, curve_steps=4, n_random=2, top_k=2)
    examples = [build_example(tiny_llama, "cat", "the cat sat on the mat . the cat", " sat", "next_token"),
                build_example(tiny_llama, "dog", "he saw the big dog", " ran", "logit_diff", foil=" sat"),
                *grounding_examples(tiny_llama, [GROUNDED])]
    frame = run_attribution(tiny_llama, examples, config, progress=False)
    n_layers, n_heads = 2, 4
    values = frame[frame["metric"] == "target_value"].set_index("example")["value"]
    errors = frame[frame["metric"] == "ig_completeness_error"].set_index("example")["value"]
    assert len(errors) == 3 and errors.notna().all()
    ig = frame[(frame["metric"] == "attribution") & (frame["method"] == "integrated_gradients")]
    reported = frame[frame["metric"] == "ig_completeness_error"].set_index("example")
    for example, rows in ig.groupby("example"):  # the row is |sum IG - (f(x) - f(b))| with the stored f values
        gap = reported.loc[example, "f_input"] - reported.loc[example, "f_baseline"]
        assert reported.loc[example, "value"] == pytest.approx(abs(rows["value"].sum() - gap), abs=1e-4)
        assert reported.loc[example, "f_input"] == pytest.approx(values[example])
    attribution = frame[frame["metric"] == "attribution"]
    assert attribution.groupby("example").size().to_dict() == {e.id: 4 * e.tokens.numel() for e in examples}
    last = attribution[attribution["position"] == 10]  # "cat": <s> + 9 words, then the target token, unseen
    assert (last[last["example"] == "cat"]["value"] == 0).all()
    pearson_rows = frame[(frame["metric"] == "pearson") & (frame["example"] == "cat")]
    assert len(pearson_rows) == 4 * (n_layers * n_heads + n_layers + 1 + n_layers)
    assert pearson_rows["value"].between(-1, 1).all() and (pearson_rows["n_positions"] == 9).all()
    assert set(pearson_rows["view"]) == {"head", "layer", "all", "rollout"}
    for example in ("cat", "dog", "g"):
        rows = frame[frame["example"] == example]
        for mode, at in (("deletion", 0), ("insertion", -1)):
            curves = rows[rows["metric"] == mode]
            assert set(curves["ranking"]) == {"saliency", "input_x_gradient", "integrated_gradients", "occlusion",
                                              "attention_all", "attention_rollout", "random"}
            ends = curves.sort_values("step").groupby("ranking")["value"].agg(["first", "last"])
            assert ends["first" if at == 0 else "last"].to_numpy() == pytest.approx(values[example], abs=1e-4)
            other = ends["last" if at == 0 else "first"]
            assert other.to_numpy() == pytest.approx(other.iloc[0], abs=1e-4)  # all removed: same for every order
    shares = frame[frame["metric"] == "grounding_share"]
    assert set(shares["example"]) == {"g"}
    sums = shares.groupby(["method", "view", "layer"], dropna=False)["value"].sum(min_count=1)
    assert len(sums) == 3 + n_layers + 2 + 1  # gradient methods, layers, all, rollout, occlusion
    assert sums.iloc[:-1].to_numpy() == pytest.approx(1.0) and sums.dropna().to_numpy() == pytest.approx(1.0)
    assert shares.groupby(["method", "view", "layer"], dropna=False)["cited"].sum().eq(1).all()
    assert shares["length_share"].iloc[:3].tolist() == pytest.approx([7 / 20, 7 / 20, 6 / 20])
    assert frame["layer"].dtype == "Int64" and (frame["analysis"] == "attribution").all()
    # the runner's views equal the full cache
    cache = Recorder(tiny_llama, batch_size=1, progress=False).cache(
        TokenDataset([examples[0].tokens], ["cat"], [examples[0].token_texts]), ["pattern"])
    layer1 = cache[tiny_llama.hook_name("pattern", 1)][0].double()
    stored = frame[(frame["metric"] == "attention") & (frame["view"] == "layer") & (frame["layer"] == 1)
                   & (frame["example"] == "cat")].sort_values("position")["value"].to_numpy()
    assert stored == pytest.approx(layer1[:, 9].mean(0).numpy(), abs=1e-7)  # query row 9 reads the target


def test_drop_replacement_and_errors(tiny_llama, tmp_path):
    config = AttributionConfig(methods=["occlusion"], replacement="drop", curve_steps=2, n_random=1)
    example = build_example(tiny_llama, "cat", "the cat sat on the mat", " .", "next_token")
    frame = run_attribution(tiny_llama, [example], config, progress=False)
    scores = frame[frame["metric"] == "attribution"].sort_values("position")["value"]
    assert scores.iloc[:7].notna().all() and scores.iloc[7:].isna().all()
    errors = []
    with pytest.raises(ConfigError, match=r"prompts and attribution.grounding are both null") as info:
        check_config(AttributionConfig(prompts=None, grounding=None))
    errors.append(info)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "x", "prompt": "the cat"}\n')
    with pytest.raises(ConfigError, match=r"target is span but prompts x have no target") as info:
        check_config(AttributionConfig(prompts=str(bad), target="span", grounding=None))
    errors.append(info)
    bad.write_text('{"id": "x", "passages": ["a"], "question": "q", "answer": "a", "cited": 0}\n')
    with pytest.raises(DatasetError, match=r"'passages' must be a list of at least two") as info:
        check_config(AttributionConfig(prompts=None, grounding=str(bad)))
    errors.append(info)
    with pytest.raises(ConfigError, match=r"analyses\.attribution\.replacement: Input should be 'zero', 'pad', "
                       r"'mean' or 'drop'") as info:
        parse_config({"analyses": {"attribution": {"replacement": "blank"}}})
    errors.append(info)
    with pytest.raises(DatasetError, match=r"example ids repeat") as info:
        run_attribution(tiny_llama, [example, example], config, progress=False)
    errors.append(info)
    assert all("\n" not in str(info.value) for info in errors)
    builtin = load_grounded()
    assert len(builtin) == 12 and sorted({item.cited for item in builtin}) == [0, 1, 2]
    assert all(item.answer in item.passages[item.cited] for item in builtin)
    assert [p.id for p in load_target_prompts(limit=2)] == ["capital", "names"]


# ---------------------------------------------------------------------------------------------- CLI
def test_analyze_attribution_end_to_end(tmp_path, tiny_llama_dir, run_notebook):
    """CLI run on user prompt and grounding files with the tiny Llama, its rows, then the notebook on that store."""
    import json

    from typer.testing import CliRunner

    from mechbench.cli import app
    from mechbench.store import ResultStore

    prompts = [{"id": "cat", "prompt": "the cat sat on the", "target": " mat", "foil": " house"},
               {"id": "count", "prompt": "one two three four", "target": " five six", "foil": " ten"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    grounded = {"id": "g", "passages": list(GROUNDED.passages), "question": GROUNDED.question,
                "answer": GROUNDED.answer, "cited": GROUNDED.cited}
    (tmp_path / "grounding.jsonl").write_text(json.dumps(grounded) + "\n")
    config = tmp_path / "attribution.yaml"
    config.write_text(f"model: {tiny_llama_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n  attribution:\n"
                      f"    prompts: {tmp_path / 'prompts.jsonl'}\n    grounding: {tmp_path / 'grounding.jsonl'}\n"
                      "    target: span\n    ig_steps: 16\n    curve_steps: 3\n    n_random: 2\n")
    result = CliRunner().invoke(app, ["analyze", "attribution", "--config", str(config), "--run-id", "a1",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = ResultStore(tmp_path / "store").read(analysis="attribution", run_id="a1")
    assert set(frame["example"]) == {"cat", "count", "g"}
    assert set(frame["metric"]) >= {"attribution", "attention", "pearson", "spearman", "topk_overlap", "deletion",
                                    "insertion", "deletion_auc", "insertion_auc", "grounding_share",
                                    "ig_completeness_error", "target_value"}
    targets = frame[frame["metric"] == "target_value"].set_index("example")
    assert targets.loc["count", "target"].split() == ["five", "six"] and targets.loc["count", "target_kind"] == "span"
    assert targets.loc["g", "target_kind"] == "span"
    shown = run_notebook("attention_vs_saliency.ipynb", tmp_path / "store")
    assert len(shown) == 6  # token heatmap, scatter, correlation table, per-layer r, deletion curves, grounding
    assert all(len(figure.data) > 0 for figure in shown)


# ---------------------------------------------------------------------------- IG under a tolerance
def test_ig_points_double_until_the_completeness_error_holds():
    """f(e) = sum sin(3 e): two Gauss-Legendre points leave a large completeness error, which falls fast as
    points double; each example is refined on its own, and one that cannot meet the tolerance is flagged."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.rand(3, 4, 2, generator=generator) * torch.tensor([0.1, 1.0, 2.0])[:, None, None]

    def forward_for(rows):
        return lambda e: torch.sin(3 * e).sum((1, 2))

    baselines = torch.zeros_like(embeddings)
    scores, delta, points, converged = converged_integrated_gradients(forward_for, embeddings, baselines, 2,
                                                                      1e-6, 64)
    gap = torch.sin(3 * embeddings).sum((1, 2))
    assert bool(converged.all()) and bool((delta.abs() <= 1e-6 * gap.abs()).all())
    assert points[0] < points[2] and int(points.max()) <= 64  # the nearly linear example needs fewer points
    torch.testing.assert_close(scores.sum(-1), gap, atol=1e-5, rtol=1e-5)
    # capped at 4 points: the widest example (|delta| 4e-3 of a gap near 1) cannot meet 1e-6 and is flagged
    _, _, points_capped, converged_capped = converged_integrated_gradients(forward_for, embeddings, baselines, 2,
                                                                           1e-6, 4)
    assert points_capped.tolist() == [2, 4, 4] and converged_capped.tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"ig_max_steps \(8\) is below ig_steps \(32\)"):
        AttributionConfig(ig_tolerance=0.05, ig_max_steps=8)


def test_runner_flags_the_points_and_convergence_of_each_example(tiny_llama):
    config = AttributionConfig(methods=["integrated_gradients"], views=["all"], ig_steps=2, ig_tolerance=0.01,
                               ig_max_steps=64, curve_steps=0)
    examples = [build_example(tiny_llama, "cat", "the cat sat on the mat . the cat", " sat", "next_token"),
                build_example(tiny_llama, "dog", "he saw the big dog", " ran", "next_token")]
    frame = run_attribution(tiny_llama, examples, config, progress=False)
    errors = frame[frame["metric"] == "ig_relative_error"].set_index("example")
    assert set(errors.index) == {"cat", "dog"} and errors["ig_points"].dtype == "Int64"
    for _, row in errors.iterrows():
        assert bool(row["ig_converged"]) == (row["value"] <= 0.01)
        assert int(row["ig_points"]) in (2, 4, 8, 16, 32, 64)
        if int(row["ig_points"]) < 64:
            assert bool(row["ig_converged"])
