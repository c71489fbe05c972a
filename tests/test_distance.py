"""WAAD / FAI (Li et al. 2025): metric functions on hand-built patterns, ground truth on toy-planted, CLI + notebook.

Ground truth: on inputs with no repeated token and no delimiter, toy-planted's self head (1.1) attends to its own
position (span 0, WAAD 0) and its previous-token head (0.1) to the position before (span 1, WAAD 1); the BOS head
(0.0) and the delimiter head (1.2, resting on BOS) attend to position 0 (span = mean t); the induction head (no
earlier occurrence) and the three zero heads are uniform (span = mean t / 2).
"""

from __future__ import annotations

import pytest
import torch

from mechbench.analyses.waad_fai import (
    DistanceConfig,
    check_config,
    coupling_statistics,
    fai,
    find_peaks,
    head_spans,
    next_token_entropy,
    run_distance,
    select_layers,
    split_heads,
    transcript_dataset,
    waad,
)
from mechbench.config import parse_config
from mechbench.core.recorder import Recorder
from mechbench.errors import ConfigError, DatasetError
from mechbench.models.toy import PLANTED_CTX, PLANTED_HEADS
from mechbench.tasks.reasoning import Transcript, load_problems, load_transcripts

NAN = float("nan")


def transcript(name: str, prompt: list[int], response: list[int]) -> Transcript:
    return Transcript(id=name, prompt_ids=torch.tensor(prompt), response_ids=torch.tensor(response))


#: no token repeats and no delimiter (16): the planted heads behave as the module docstring says
TRANSCRIPTS = [transcript("a", [0, 3, 5, 7, 9], [2, 4, 6, 8, 10, 12, 11]),
               transcript("b", [0, 1, 2], [13, 14, 15, 12, 11, 10, 9, 8, 7])]


def causal_softmax(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3
    n = shape[-1]
    return scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")).softmax(-1)


# ---------------------------------------------------------------------------------------------- metric functions
def test_waad_is_capped_and_matches_the_sum():
    pattern = causal_softmax((3, 20, 20))
    values = waad(pattern, (5, 20), window=4)
    assert values.shape == (3, 15)
    assert (values >= 0).all() and (values <= 4).all()
    for head in range(3):
        for t in range(5, 20):
            expected = sum(float(pattern[head, t, s]) * min(t - s, 4) for s in range(t + 1))
            assert float(values[head, t - 5]) == pytest.approx(expected, rel=1e-6)  # float32 sums
    previous = torch.zeros(8, 8)
    previous[0, 0] = 1
    previous[torch.arange(1, 8), torch.arange(7)] = 1
    bos = torch.zeros(8, 8)
    bos[:, 0] = 1
    assert waad(previous, (3, 8)).tolist() == [1.0] * 5
    assert waad(torch.eye(8), (3, 8)).tolist() == [0.0] * 5
    assert waad(bos, (3, 8), window=4).tolist() == [3.0, 4.0, 4.0, 4.0, 4.0]  # t - 0 capped at W
    assert head_spans(torch.stack([previous, torch.eye(8), bos]), (3, 8)).tolist() == [1.0, 0.0, 5.0]


def test_fai_averages_only_the_horizon_rows():
    # A[t, s] = (10 t + s) / 1000 on rows 2..5; prompt rows 0..1 hold 999 and must never be read
    pattern = torch.tensor([[10.0 * t + s for s in range(6)] for t in range(6)]) / 1000
    pattern[:2] = 999.0
    rows = (2, 6)
    full = fai(pattern, rows, h_lo=0)  # T(s) = {s .. 5}
    assert full.tolist() == pytest.approx([(22 + 32 + 42 + 52) / 4000, (33 + 43 + 53) / 3000, (44 + 54) / 2000,
                                           55 / 1000])
    clipped = fai(pattern, rows, h_lo=1, h_hi=2)  # T(s) = {s+1 .. min(5, s+2)}
    assert clipped[:3].tolist() == pytest.approx([(32 + 42) / 2000, (43 + 53) / 2000, 54 / 1000])  # end of response
    assert torch.isnan(clipped[3])  # the last token has no future row
    assert torch.isnan(fai(pattern, rows, h_lo=10)).all()
    assert fai(pattern, rows, h_lo=2, h_hi=2)[:2].tolist() == pytest.approx([42 / 1000, 53 / 1000])


def test_split_heads_and_layers():
    spans = torch.tensor([[0.5, 1.0, NAN], [3.0, 0.1, 2.0]])
    assert split_heads(spans, 0.3, 0.3) == ([(1, 1), (0, 0)], [(1, 0), (1, 2)])  # 5 heads with a span: 2 + 2
    assert split_heads(spans, 0.1, 0.5) == ([(1, 1)], [(1, 0), (1, 2), (0, 1)])
    with pytest.raises(ConfigError, match=r"1 heads cannot hold 1 local and 1 global heads") as info:
        split_heads(torch.tensor([[1.0, NAN]]))
    assert "\n" not in str(info.value)
    assert select_layers(30, "middle") == [10, 12, 15, 18, 20]
    assert select_layers(4, "all") == [0, 1, 2, 3]
    assert select_layers(4, [2, 0, 2]) == [0, 2]
    with pytest.raises(ConfigError, match=r"^waad_fai\.layers \[5, 1\] names layer 5, but m has layers 0\.\.3; give "
                       r"layers from 0 to 3 or use 'all' / 'middle'$"):
        select_layers(4, [5, 1], model="m")


def test_find_peaks():
    values = torch.tensor([0.0, 2, 1, 1, 3, 3, 0, NAN, 5])
    assert find_peaks(values, 0.0).nonzero().flatten().tolist() == [1, 4, 5, 8]  # plateau: both; NaN neighbour lower
    assert find_peaks(values, 0.8).nonzero().flatten().tolist() == [4, 5, 8]
    assert not find_peaks(torch.ones(6)).any()
    assert not find_peaks(torch.full((3,), NAN)).any()


def test_coupling_statistics_hand_built():
    zeros = [0.0] * 10

    def series(**at: float) -> torch.Tensor:
        values = torch.tensor(zeros)
        for key, value in at.items():
            values[int(key[1:])] = value
        return values

    local = series(p1=5, p6=7)  # WAAD peaks 1, 6
    glob = series(p2=3, p8=9)  # global FAI peaks 2, 8
    receiver = series(p3=4, p8=6)  # receiver FAI peaks 3, 8
    entropy = series(p1=1, p6=3)
    options = dict(quantile=0.8, tolerance=1, follow_window=3, n_random=2000)
    frame = coupling_statistics([local], [glob], [receiver], [entropy], generator=torch.Generator().manual_seed(0),
                                **options).set_index("metric")
    assert frame.loc["coupling_entropy", "value"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert frame.loc["coupling_fai_cooccurrence", "value"] == 1.0  # 3 is next to 2, 8 on 8
    assert frame.loc["coupling_waad_fai", "value"] == 1.0  # 2 follows 1, 8 follows 6
    assert frame["n_events"].tolist() == [2, 2, 2]
    # random positions: expected mean entropy 4 / 10; 6 of 10 positions lie within 1 of a global peak;
    # 8 of 10 positions have a WAAD peak 0..3 tokens before them (1..4 and 6..9)
    assert frame["baseline"].tolist() == pytest.approx([0.4, 0.6, 0.8], abs=0.05)
    again = coupling_statistics([local], [glob], [receiver], [entropy], generator=torch.Generator().manual_seed(0),
                                **options)
    assert again["baseline"].tolist() == frame["baseline"].tolist()  # seeded: deterministic
    strict = coupling_statistics([local], [glob], [receiver], [entropy], **(options | dict(follow_window=0,
                                                                                           tolerance=0)))
    assert strict.set_index("metric").loc[["coupling_fai_cooccurrence", "coupling_waad_fai"], "value"].tolist() == [
        0.5, 0.0]


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_gives_one_line_errors(planted, tmp_path):
    errors = []
    with pytest.raises(DatasetError, match=r"no transcripts; give at least one") as info:
        transcript_dataset(planted, [])
    errors.append(info)
    with pytest.raises(DatasetError, match=r"'long' has 3 prompt \+ 62 response tokens, longer than the context "
                       r"window of toy-planted \(64\)") as info:
        run_distance(planted, [transcript("long", [0, 1, 2], [3] * (PLANTED_CTX - 2))], progress=False)
    errors.append(info)
    with pytest.raises(DatasetError, match=r"'e' has an empty response") as info:
        transcript_dataset(planted, [transcript("e", [0, 1], [])])
    errors.append(info)
    with pytest.raises(ConfigError, match=r"local_frac \+ global_frac = 1.1 is above 1") as info:
        check_config(DistanceConfig(local_frac=0.6, global_frac=0.5))
    errors.append(info)
    with pytest.raises(ConfigError, match=r"h_hi \(5\) is below waad_fai.h_lo \(10\)") as info:
        check_config(DistanceConfig(h_lo=10, h_hi=5))
    errors.append(info)
    with pytest.raises(ConfigError, match=r"analyses\.distance\.window: Input should be greater than 0") as info:
        parse_config({"analyses": {"distance": {"window": 0}}})
    errors.append(info)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match=r"empty.jsonl is empty; give at least one \{prompt, response\}") as info:
        check_config(DistanceConfig(transcripts=str(empty)))
    errors.append(info)
    empty.write_text('{"prompt": "a"}\n')
    with pytest.raises(DatasetError, match=r"line 1 is not a JSON object with string fields 'prompt', 'response'"):
        load_transcripts(str(empty))
    assert all("\n" not in str(info.value) for info in errors)
    problems = load_problems()
    assert len(problems) == 12 and len({p.id for p in problems}) == 12
    assert [p.id for p in load_problems(limit=2)] == ["apples", "bus"]


# ---------------------------------------------------------------------------------------------- ground truth
def test_planted_heads_runner_matches_full_cache(planted):
    frame = run_distance(planted, TRANSCRIPTS, DistanceConfig(n_random=3), progress=False)
    spans = frame[frame["metric"] == "head_span"].set_index(["layer", "head"])
    assert len(spans) == 8 and (spans["n_examples"] == 2).all()
    assert spans.loc[PLANTED_HEADS["previous_token"], "value"] == pytest.approx(1.0, abs=1e-9)
    assert spans.loc[PLANTED_HEADS["self"], "value"] == pytest.approx(0.0, abs=1e-9)
    # BOS head: mean t over the response rows, 8 (rows 5..11) and 7 (rows 3..11), averaged
    assert spans.loc[PLANTED_HEADS["bos"], "value"] == pytest.approx(7.5, abs=1e-6)
    assert spans.loc[(0, 2), "value"] == pytest.approx(3.75, abs=1e-6)  # uniform: mean t / 2
    groups = spans["group"].to_dict()
    assert {head for head, group in groups.items() if group == "local"} == {PLANTED_HEADS["self"],
                                                                           PLANTED_HEADS["previous_token"]}
    assert {head for head, group in groups.items() if group == "global"} == {PLANTED_HEADS["bos"],
                                                                            PLANTED_HEADS["delimiter"]}
    assert spans["receiver"].sum() == 2

    dataset = transcript_dataset(planted, TRANSCRIPTS)
    cache = Recorder(planted, batch_size=1, progress=False).cache(dataset, ["pattern"])
    layer = [cache[planted.hook_name("pattern", la)] for la in range(2)]
    receivers = sorted(spans.index[spans["receiver"]])
    for index, item in enumerate(TRANSCRIPTS):
        prompt, n = item.prompt_ids.numel(), dataset.lengths[index]
        rows = (prompt, n)
        heads = {name: layer[la][index, h, :n, :n] for name, (la, h) in PLANTED_HEADS.items()}
        assert waad(heads["previous_token"], rows).tolist() == pytest.approx([1.0] * (n - prompt), abs=1e-9)
        assert waad(heads["self"], rows).tolist() == pytest.approx([0.0] * (n - prompt), abs=1e-9)
        ours = frame[frame["example"] == item.id].sort_values("position")
        got = ours[ours["metric"] == "waad"]
        assert got["position"].tolist() == list(range(prompt, n))
        assert got["value"].tolist() == pytest.approx([0.5] * (n - prompt), abs=1e-9)
        expected = waad((heads["previous_token"].double() + heads["self"].double()) / 2, rows)
        assert torch.allclose(torch.tensor(got["value"].to_numpy()), expected, rtol=0, atol=1e-12)
        for head_set, group in (("global", [PLANTED_HEADS["bos"], PLANTED_HEADS["delimiter"]]),
                                ("receiver", receivers)):
            mean_map = torch.stack([layer[la][index, h, :n, :n] for la, h in group]).double().mean(0)
            expected = fai(mean_map, rows)[:-1]  # the last token has no future row: no row
            got = ours[(ours["metric"] == "fai") & (ours["head_set"] == head_set)]
            assert got["position"].tolist() == list(range(prompt, n - 1))
            assert torch.allclose(torch.tensor(got["value"].to_numpy()), expected, rtol=1e-9, atol=1e-15)
        with torch.no_grad():
            logits = planted.bridge(dataset.tokens[index][None])[0]
        entropy = ours[ours["metric"] == "entropy"]
        assert torch.allclose(torch.tensor(entropy["value"].to_numpy()),
                              next_token_entropy(logits[prompt - 1:n - 1]), atol=1e-6)
        assert got["token"].tolist() == [str(int(i)) for i in item.response_ids[:-1]]
    lengths = frame[frame["metric"] == "response_length"].set_index("example")
    assert lengths["value"].tolist() == [7.0, 9.0] and lengths["prompt_length"].tolist() == [5, 3]
    coupling = frame[frame["metric"].str.startswith("coupling_")]
    assert sorted(coupling["metric"]) == ["coupling_entropy", "coupling_fai_cooccurrence", "coupling_waad_fai"]
    assert (coupling["n_random"] == 3).all() and (coupling["n_examples"] == 2).all()
    middle = run_distance(planted, TRANSCRIPTS, DistanceConfig(layers=[1], local_frac=0.25, global_frac=0.25,
                                                               n_random=1), progress=False)
    groups = middle[middle["metric"] == "head_span"].set_index(["layer", "head"])["group"]
    assert groups.index.get_level_values("layer").unique().tolist() == [1]  # layer 0 not recorded
    assert groups[groups == "local"].index.tolist() == [PLANTED_HEADS["self"]]
    assert groups[groups == "global"].index.tolist() == [PLANTED_HEADS["delimiter"]]


# ---------------------------------------------------------------------------------------------- CLI
def test_analyze_distance_end_to_end(tmp_path, tiny_llama_dir, run_notebook):
    """CLI run on a user transcript file, its rows, then every code cell of notebooks/waad_fai.ipynb on that store."""
    import json

    from typer.testing import CliRunner

    from mechbench.cli import app
    from mechbench.store import ResultStore

    lines = [{"id": "cat", "prompt": "the cat sat on the mat .", "response": "the dog ran to the house . it was big ."},
             {"id": "two", "prompt": "one two three", "response": "four five six seven eight nine ten ."}]
    (tmp_path / "talk.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = tmp_path / "distance.yaml"
    config.write_text(f"model: {tiny_llama_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n  distance:\n"
                      f"    transcripts: {tmp_path / 'talk.jsonl'}\n    n_random: 2\n    window: 4\n")
    result = CliRunner().invoke(app, ["analyze", "distance", "--config", str(config), "--run-id", "d1",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = ResultStore(tmp_path / "store").read(analysis="distance", run_id="d1")
    # "distance" is the old name of waad_fai: the config block and the CLI accept it, the rows are waad_fai's,
    # and the store finds them under either name
    assert set(frame["analysis"]) == {"waad_fai"}
    assert len(ResultStore(tmp_path / "store").read(analysis="waad_fai", run_id="d1")) == len(frame)
    spans = frame[frame["metric"] == "head_span"]
    assert len(spans) == 2 * 4  # tiny Llama: 2 layers x 4 query heads
    assert spans["group"].value_counts().to_dict() == {"neither": 4, "local": 2, "global": 2}
    assert spans[spans["group"] == "local"]["value"].max() <= spans[spans["group"] == "neither"]["value"].min()
    assert spans[spans["group"] == "global"]["value"].min() >= spans[spans["group"] == "neither"]["value"].max()
    n_response = {"cat": 11, "two": 8}  # word-level tokenizer, no BOS on the response
    waad_rows = frame[frame["metric"] == "waad"]
    assert waad_rows.groupby("example").size().to_dict() == n_response
    assert waad_rows["value"].between(0, 4).all() and (waad_rows["window"] == 4).all()
    fai_rows = frame[(frame["metric"] == "fai") & (frame["head_set"] == "global")]
    assert fai_rows.groupby("example").size().to_dict() == {k: v - 1 for k, v in n_response.items()}
    first = waad_rows[waad_rows["example"] == "cat"].sort_values("position")
    assert first["position"].iloc[0] == 8 and first["token"].tolist()[:3] == ["the", "dog", "ran"]  # <s> + 7 words
    coupling = frame[frame["metric"].str.startswith("coupling_")]
    assert len(coupling) == 3 and coupling["baseline"].notna().all()
    shown = run_notebook("waad_fai.ipynb", tmp_path / "store")
    assert len(shown) == 5  # span heatmap, WAAD, FAI, entropy along one response, coupling bars
    assert all(len(figure.data) > 0 for figure in shown)


def test_next_token_entropy_in_float32_matches_float64_over_a_large_vocabulary():
    scales = torch.tensor([0.1, 1, 3, 10, 30, 100])[:, None]
    logits = torch.randn(6, 50_000, generator=torch.Generator().manual_seed(0)) * scales
    logprobs = logits.double().log_softmax(-1)
    expected = -(logprobs.exp() * logprobs).sum(-1)
    assert torch.allclose(next_token_entropy(logits), expected, rtol=1e-5, atol=1e-5)
    for slice_bytes in (1, 4 * 50_000 * 4):  # one row per slice; slices of 4 rows, across a leading axis
        torch.testing.assert_close(next_token_entropy(logits.reshape(2, 3, -1), slice_bytes).flatten(),
                                   expected, rtol=1e-5, atol=1e-5)
    assert float(expected[0]) > 10.0 and float(expected[-1]) < 1.0  # near uniform ... near one-hot
