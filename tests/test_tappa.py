"""TAPPA (Yang et al. 2026): q-similarity, pattern types, RoPE bands, KV budgets and pruning orders.

Ground truth on toy-planted (``mechbench/models/toy.py``): the BOS head (0.0) and the delimiter head (1.2) have a
constant query (a bias), so their q-similarity is exactly 1, and they attend to position 0 (vertical, without a
delimiter token in the input); the previous-token head (0.1) and the self head (1.1) have one-hot position queries,
mutually orthogonal, so their q-similarity is exactly 0, and they attend at lag 1 / lag 0 (diagonal); the three
zero heads have zero queries (q-sim 0) and uniform attention (diffuse).
"""

from __future__ import annotations

import math

import pytest
import torch

from mechbench.analyses.tappa import (
    MODES,
    PatternCriteria,
    TappaConfig,
    apply_rope,
    block_influence,
    check_config,
    classify_patterns,
    eviction_keep,
    layer_budgets,
    pattern_scores,
    q_similarity,
    rope_band_advantage,
    run_tappa,
    similarity_matrix,
    tappa_prune_scores,
    window_bounds,
)
from mechbench.config import parse_config
from mechbench.core.dataset import TokenDataset
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError
from mechbench.models.toy import PLANTED_HEADS, PLANTED_UNIFORM_HEADS
from mechbench.stats import paired_spearman as spearman


def explicit_mean(q: torch.Tensor, mode: str) -> torch.Tensor:
    matrix = similarity_matrix(q, mode)
    n = q.shape[-2]
    return (matrix.sum((-1, -2)) - matrix.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


# ---------------------------------------------------------------------------------------------- q-similarity
def test_identical_queries_give_one_and_orthogonal_give_zero():
    same = torch.tensor([1.0, -2.0, 0.5, 3.0]).repeat(2, 7, 1) * torch.tensor([1.0, 3.0])[:, None, None]
    assert q_similarity(same).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert q_similarity(same, "pearson").tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    scaled = same[0] * torch.arange(1, 8)[:, None]  # same direction, different norms: cosine still 1
    assert float(q_similarity(scaled)) == pytest.approx(1.0, abs=1e-12)
    assert float(q_similarity(same[0], "euclidean")) == pytest.approx(0.0, abs=1e-6)
    assert float(q_similarity(same[0], "rbf")) == pytest.approx(1.0, abs=1e-12)
    orthogonal = torch.eye(6) * torch.arange(1, 7)[:, None]
    assert float(q_similarity(orthogonal)) == 0.0
    assert float(q_similarity(orthogonal, "dot")) == 0.0
    assert float(q_similarity(orthogonal, "angular")) == pytest.approx(0.5, abs=1e-12)  # 90 degrees / 180
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert float(q_similarity(opposite)) == pytest.approx(-1.0)
    assert q_similarity(torch.ones(3, 1, 4)).tolist() == [0.0, 0.0, 0.0]  # one query: no pair (reference: 0)
    with pytest.raises(ValueError, match=r"unknown similarity mode 'cos'"):
        q_similarity(same, "cos")


@pytest.mark.parametrize("mode", MODES)
def test_closed_form_and_chunked_means_equal_the_explicit_pairwise_mean(mode):
    q = torch.randn(3, 37, 8, generator=torch.Generator().manual_seed(1))
    expected = explicit_mean(q, mode)
    assert torch.allclose(q_similarity(q, mode, chunk_size=5), expected, rtol=1e-9, atol=1e-12)
    # the pairwise cosine itself against a direct loop (the reference's definition)
    if mode == "cosine":
        pairs = [torch.nn.functional.cosine_similarity(q[0, i], q[0, j], dim=0, eps=1e-8).item()
                 for i in range(37) for j in range(37) if i != j]
        assert float(expected[0]) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)


def test_window_bounds_follow_the_pruning_reference():
    assert window_bounds(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 10)]
    assert window_bounds(1100, 1024, 256) == [(0, 1024), (256, 1100), (512, 1100), (768, 1100), (1024, 1100)]
    assert window_bounds(9, 4, 4) == [(0, 4), (4, 8)]  # a 1-token tail has no pair


# ---------------------------------------------------------------------------------------------- pattern types
def causal_uniform(n: int) -> torch.Tensor:
    ones = torch.ones(n, n).tril()
    return ones / ones.sum(-1, keepdim=True)


def hand_patterns(n: int = 64) -> dict[str, torch.Tensor]:
    previous = torch.zeros(n, n)
    previous[0, 0] = 1
    previous[torch.arange(1, n), torch.arange(n - 1)] = 1
    bos = torch.zeros(n, n)
    bos[:, 0] = 1
    periodic = torch.zeros(n, n)
    for t in range(n):
        keys = list(range(t - 5, -1, -5)) or [t]  # every earlier position t - 5, t - 10, ...
        periodic[t, keys] = 1 / len(keys)
    stripe = torch.zeros(n, n)
    for t in range(n):
        stripe[t, t - 9 if t >= 9 else t] = 1  # a single offset at lag 9 (the first rows on themselves)
    return {"previous": previous, "bos": bos, "uniform": causal_uniform(n), "periodic": periodic,
            "self": torch.eye(n), "stripe": stripe}


def test_pattern_scores_and_labels_on_hand_built_heads():
    patterns = hand_patterns()
    scores = pattern_scores(torch.stack(list(patterns.values())))
    labels = dict(zip(patterns, classify_patterns(scores), strict=True))
    assert labels == {"previous": "diagonal", "bos": "vertical", "uniform": "diffuse", "periodic": "periodic",
                      "self": "diagonal", "stripe": "diagonal"}
    by_name = {name: {key: float(value[i]) for key, value in scores.items()} for i, name in enumerate(patterns)}
    assert by_name["previous"]["diagonal"] == 1.0 and by_name["previous"]["vertical"] == 0.0
    assert by_name["bos"]["vertical"] == 1.0 and by_name["bos"]["diagonal"] == pytest.approx(1 / 60)  # 1 row/lag
    assert by_name["uniform"]["diffuse"] == pytest.approx(1.0) and by_name["self"]["diffuse"] == 0.0
    # rows 4..63 (60 rows): lag 5 carries 1/k of the rows with k earlier multiples, the other multiples the rest
    assert by_name["periodic"]["period"] == 5.0 and by_name["periodic"]["periodic"] > 0.6
    assert by_name["periodic"]["diagonal"] == pytest.approx(5 * sum(1 / k for k in range(1, 12)) / 60 + 4 / 60 / 12)
    assert by_name["stripe"]["periodic"] == 0.0  # one offset is not a season
    # a short input cannot be scored
    assert math.isnan(float(pattern_scores(torch.eye(4)[None])["vertical"][0]))
    assert classify_patterns(pattern_scores(torch.eye(4)[None])) == ["unknown"]
    mixed = 0.4 * patterns["bos"] + 0.6 * patterns["uniform"]
    assert classify_patterns(pattern_scores(mixed[None]), PatternCriteria(diffuse_threshold=0.95)) == ["mixed"]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman([1, 2, float("nan"), 3, 4], [1, 2, 0, 3, 4]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- RoPE
def test_rope_rotation_and_band_decomposition():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 8, generator=generator, dtype=torch.float64)
    rotated = apply_rope(x, torch.arange(6), base=100.0)
    for t in range(6):  # pair i = (i, i + 4) turns by t * 100^(-i/4)
        for i in range(4):
            angle = t * 100.0 ** (-i / 4)
            c, s = math.cos(angle), math.sin(angle)
            assert rotated[0, t, i].item() == pytest.approx(c * x[0, t, i].item() - s * x[0, t, i + 4].item())
            assert rotated[0, t, i + 4].item() == pytest.approx(s * x[0, t, i].item() + c * x[0, t, i + 4].item())
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1))
    q, k = (torch.randn(3, 10, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
    pattern = scores.softmax(-1)
    advantage = rope_band_advantage(q, k, pattern, n_bands=2)
    visible = torch.ones(10, 10).tril()
    logits = (q @ k.transpose(-1, -2) / math.sqrt(8)) * visible
    total = ((pattern * logits).sum(-1) - logits.sum(-1) / visible.sum(-1))[:, 1:].mean(-1)
    assert torch.allclose(advantage.sum(-1), total)  # the bands add up to the whole logit
    assert (total > 0).all()  # a softmax of the logits favours the high-logit keys
    high_only = q.clone()
    high_only[..., [2, 3, 6, 7]] = 0  # keep pairs 0, 1 (high frequency) only
    assert rope_band_advantage(high_only, k, pattern, n_bands=2)[:, 1].abs().max() == 0.0


# ---------------------------------------------------------------------------------------------- downstream
def test_layer_budgets_block_influence_and_orders():
    budgets = layer_budgets(torch.tensor([0.9, 0.5, 0.1, 0.5]), 32, min_budget=16)
    assert budgets.tolist() == [16, 30, 53, 29] and budgets.sum() == 128  # ∝ 1 - q_sim, 16 floor re-shared
    assert layer_budgets(torch.tensor([0.2, 0.2, 0.2]), 7).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="outside"):
        layer_budgets(torch.tensor([0.1, 0.2]), 4, min_budget=8)
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert block_influence(h, torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])).tolist() == [0.0, 1.0, 0.5]
    bi = torch.tensor([0.9, 0.1, 0.2, 0.15])
    q = torch.tensor([0.5, 0.2, 0.9, 0.6])
    score, order = tappa_prune_scores(bi, q, beta=0.0)
    assert order == [1, 3, 2, 0]  # Block Influence alone: lowest first
    score, order = tappa_prune_scores(bi, q, beta=0.3)
    # BI_norm = [1, 0, .125, .0625]; q_norm = [3/7, 0, 1, 4/7]; + 0.3 (1 - q_norm)
    assert score.tolist() == pytest.approx([1 + 0.3 * 4 / 7, 0.3, 0.125, 0.0625 + 0.3 * 3 / 7])
    assert order == [2, 3, 1, 0]  # high q-sim layer 2 becomes the first to prune


def test_eviction_keeps_the_window_and_the_best_scored_keys():
    n = 12
    pattern = torch.zeros(2, n, n)
    pattern[:, :, 0] = 1.0  # every query on key 0 ...
    pattern[1, 8:, 0], pattern[1, 8:, 3] = 0.2, 0.8  # ... except head 1's window queries, mostly on key 3
    keep = eviction_keep(pattern, prompt_length=10, budget=3, window=2, kernel=1, gamma=0.0)
    assert keep[0].nonzero().flatten().tolist() == [0, 8, 9]
    assert keep[1].nonzero().flatten().tolist() == [3, 8, 9]
    shared = eviction_keep(pattern, prompt_length=10, budget=3, window=2, kernel=1, gamma=0.0, group_size=2)
    assert shared[0].tolist() == shared[1].tolist()  # one cache per KV head: the group averages its scores
    assert eviction_keep(pattern, 10, budget=10, window=2).all()


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"tappa.prune_stride \(512\) is above tappa.prune_window \(256\)"):
        check_config(TappaConfig(prune_window=256, prune_stride=512))
    with pytest.raises(ConfigError, match=r"tappa.kv_budgets \[8\] are below tappa.kv_window \(32\)"):
        check_config(TappaConfig(kv_budgets=[8, 64]))
    with pytest.raises(ConfigError, match=r"analyses\.tappa\.mode: Input should be 'cosine'"):
        parse_config({"analyses": {"tappa": {"mode": "cos"}}})
    one = tmp_path / "one.txt"
    one.write_text("just one text")
    with pytest.raises(ConfigError, match=r"prune_eval needs at least 2 texts") as info:
        check_config(TappaConfig(texts=str(one)))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- ground truth
PLANTED_SEQUENCES = [[0, 3, 9, 1, 12, 5, 7, 2, 14, 6, 11, 4, 13, 8, 10, 15, 3, 9, 1, 12, 5, 7, 2, 14, 6],
                     [0, 6, 2, 11, 15, 4, 9, 13, 1, 8, 12, 5, 10, 3, 7, 14, 6, 2, 11, 15]]
SMALL = dict(kv_window=8, kv_budgets=[10], prune_window=16, prune_stride=8, prune_ks=[1], batch_size=2)


def planted_dataset() -> TokenDataset:
    return TokenDataset(tokens=[torch.tensor(s) for s in PLANTED_SEQUENCES], example_ids=["a", "b"],
                        token_texts=[[str(i) for i in s] for s in PLANTED_SEQUENCES])


def test_planted_heads_q_similarity_and_types(planted):
    frame = run_tappa(planted, planted_dataset(), TappaConfig(**SMALL), progress=False)
    per_head = frame[frame["head"].notna()]
    qsim = per_head[per_head["metric"] == "q_similarity"].set_index(["layer", "head"])["value"]
    pruned = per_head[per_head["metric"] == "q_similarity_prune"].set_index(["layer", "head"])["value"]
    for name in ("bos", "delimiter"):  # constant query
        assert qsim[PLANTED_HEADS[name]] == pytest.approx(1.0, abs=1e-12)
        assert pruned[PLANTED_HEADS[name]] == pytest.approx(1.0, abs=1e-12)
    for head in (PLANTED_HEADS["previous_token"], PLANTED_HEADS["self"], *PLANTED_UNIFORM_HEADS):
        assert qsim[head] == 0.0 and pruned[head] == 0.0  # one-hot position queries / zero queries
    types = per_head[per_head["metric"] == "predictability"].set_index(["layer", "head"])["pattern_type"]
    assert types[PLANTED_HEADS["previous_token"]] == "diagonal"
    assert types[PLANTED_HEADS["self"]] == "diagonal"
    assert types[PLANTED_HEADS["bos"]] == "vertical"
    assert types[PLANTED_HEADS["delimiter"]] == "vertical"  # no delimiter in the input: rests on BOS
    assert all(types[head] == "diffuse" for head in PLANTED_UNIFORM_HEADS)
    layer_rows = frame[(frame["metric"] == "q_similarity") & frame["head"].isna()].set_index("layer")["value"]
    assert layer_rows.tolist() == pytest.approx(qsim.groupby(level="layer").mean().tolist())
    spearman_rows = frame[frame["metric"] == "qsim_spearman"]
    assert set(spearman_rows["variant"]) == {"kv", "prune"} and (spearman_rows["n_heads"] == 8).all()
    assert not frame["metric"].str.startswith("rope_").any()  # learned positions: no RoPE view
    kv = frame[frame["metric"] == "kv_eviction_nll"].set_index("policy")
    assert set(kv.index) == {"full", "uniform", "tappa"} and kv["value"].notna().all()
    budgets = frame[(frame["metric"] == "kv_budget") & (frame["policy"] == "tappa")]
    assert budgets["value"].sum() == pytest.approx(2 * 10)  # 2 layers x mean budget 10
    prune = frame[frame["metric"] == "prune_nll"]
    assert sorted(prune["method"]) == ["bi", "none", "tappa"] and (prune[prune["method"] != "none"]["k"] == 1).all()


def test_pre_and_post_rope_queries_differ_exactly_by_the_rotation(tiny_llama):
    texts = ["the cat sat on the mat . the dog ran to the house . it was big .",
             "one two three four five six seven eight nine ten . he went home ."]
    dataset = tiny_llama.tokenize_dataset(texts)
    cache = Recorder(tiny_llama, batch_size=1, progress=False).cache(dataset, ["q", "rot_q", "k", "rot_k"])
    base = tiny_llama.bridge.cfg.rotary_base
    for layer in range(tiny_llama.n_layers):
        for index, n in enumerate(dataset.lengths):
            q, rot_q = (cache[tiny_llama.hook_name(site, layer)][index, :, :n] for site in ("q", "rot_q"))
            rotated = apply_rope(q.double(), torch.arange(n), base)
            assert torch.allclose(rotated, rot_q.double(), atol=1e-5)
            assert torch.allclose(q_similarity(rotated), q_similarity(rot_q), atol=1e-5)
            assert (q_similarity(q) - q_similarity(rot_q)).abs().max() > 1e-3  # the rotation changes q-sim
            k, rot_k = (cache[tiny_llama.hook_name(site, layer)][index, :, :n] for site in ("k", "rot_k"))
            assert torch.allclose(apply_rope(k.double(), torch.arange(n), base), rot_k.double(), atol=1e-5)


# ---------------------------------------------------------------------------------------------- CLI + notebook
def test_analyze_tappa_end_to_end_on_toy_planted(tmp_path, run_notebook):
    """CLI run on a token-id text file with toy-planted, its rows, then every code cell of notebooks/tappa.ipynb."""
    from typer.testing import CliRunner

    from mechbench.cli import app
    from mechbench.store import ResultStore

    texts = tmp_path / "ids.txt"
    texts.write_text("\n\n".join(" ".join(map(str, s)) for s in PLANTED_SEQUENCES))
    config = tmp_path / "tappa.yaml"
    options = "".join(f"    {key}: {value}\n" for key, value in SMALL.items())
    config.write_text(f"model: toy-planted\nstore: {tmp_path / 'store'}\nanalyses:\n  tappa:\n"
                      f"    texts: {texts}\n{options}")
    result = CliRunner().invoke(app, ["analyze", "tappa", "--config", str(config), "--run-id", "t1",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = ResultStore(tmp_path / "store").read(analysis="tappa", run_id="t1")
    heads = frame[(frame["metric"] == "q_similarity") & frame["head"].notna()]
    assert len(heads) == 8 and set(heads["variant"]) == {"kv"} and (frame["model"] == "toy-planted").all()
    assert heads.set_index(["layer", "head"])["value"][PLANTED_HEADS["bos"]] == pytest.approx(1.0)
    assert {"q_similarity_prune", "predictability", "block_influence", "prune_score", "prune_nll", "kv_budget",
            "kv_eviction_nll", "qsim_spearman"} <= set(frame["metric"])
    shown = run_notebook("tappa.ipynb", tmp_path / "store")
    assert len(shown) == 5  # q-sim profile, q-sim heatmap, q-sim vs predictability, KV budgets, pruning
    assert all(len(figure.data) > 0 for figure in shown)
