"""The HTML report and the attention explorer: cross-metric table, escaping, and a real browser.

Ground truth: on toy-planted the previous-token head (0.1) puts all attention of query t on key
t-1 and the BOS head (0.0) on key 0, so the explorer's matrices are known exactly.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from mechbench.analyses.patterns import pattern_rows, run_patterns
from mechbench.models.toy import PLANTED_HEADS
from mechbench.plots import attention_explorer, display_token
from mechbench.report import head_metrics, head_table, metric_correlations, render_report
from mechbench.store import ResultStore
from mechbench.store.schema import conform

EVIL = "<script>alert(1)</script>"


def rows(analysis: str, metric: str, values: dict[tuple[int, int], float], **extra) -> pd.DataFrame:
    return pd.DataFrame([{"analysis": analysis, "metric": metric, "model": "m", "run_id": "r", "layer": layer,
                          "head": head, "value": value, **extra} for (layer, head), value in values.items()])


def frame_of(*parts: pd.DataFrame) -> pd.DataFrame:
    return conform(pd.concat(parts, ignore_index=True))


# ---------------------------------------------------------------------------------------------- cross-metric table
def test_head_metrics_average_examples_and_keep_conditions_apart():
    frame = frame_of(
        rows("retrieval", "retrieval_score", {(0, 0): 0.2, (0, 1): 0.6}, example="a"),
        rows("retrieval", "retrieval_score", {(0, 0): 0.4, (0, 1): 0.0}, example="b"),
        rows("circuits", "patching_effect", {(0, 0): 1.0, (0, 1): 2.0}, method="activation"),
        rows("circuits", "patching_effect", {(0, 0): 3.0, (0, 1): 5.0}, method="attribution"),
        # per-position rows enter only at the headline position of their analysis (sinks: 0)
        rows("sinks", "sink_score_mean", {(0, 0): 0.9, (0, 1): 0.1}, position=0),
        rows("sinks", "sink_score_mean", {(0, 0): 0.05, (0, 1): 0.7}, position=3),
        rows("sinks", "sink_score", {(0, 0): 0.5, (0, 1): 0.5}, position=0, example="a"),
    )
    metrics = {m.label: m for m in head_metrics(frame)}
    assert set(metrics) == {"retrieval: retrieval_score", "circuits: patching_effect [method=activation]",
                            "circuits: patching_effect [method=attribution]",
                            "sinks: sink_score_mean [position 0]"}
    table = head_table(list(metrics.values())).set_index(["layer", "head"])
    assert table.loc[(0, 0), "retrieval: retrieval_score"] == pytest.approx(0.3)
    assert table.loc[(0, 1), "retrieval: retrieval_score"] == pytest.approx(0.3)
    assert table.loc[(0, 1), "circuits: patching_effect [method=attribution]"] == 5.0
    assert table.loc[(0, 0), "sinks: sink_score_mean [position 0]"] == 0.9


def test_metric_correlations_are_spearman_over_shared_heads():
    a = {(0, h): float(h) for h in range(6)}
    b = {(0, h): float(h) ** 3 for h in range(6)}            # monotone in a: rho = 1
    c = {(0, h): -float(h) for h in range(6)}               # reversed: rho = -1
    table = head_table(head_metrics(frame_of(rows("x", "a", a), rows("x", "b", b), rows("x", "c", c))))
    rho = metric_correlations(table)
    assert rho.loc["x: a", "x: b"] == pytest.approx(1.0)
    assert rho.loc["x: a", "x: c"] == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------- explorer
@pytest.fixture(scope="module")
def planted_patterns(planted):
    sequence = [0, 3, 5, 7, 9, 11, 2, 4]
    return run_patterns(planted, [sequence], example_ids=["seq"], max_tokens=8, progress=False)


def test_pattern_rows_are_the_causal_triangle(planted, planted_patterns):
    n_heads = planted.n_heads
    assert len(planted_patterns) == planted.n_layers * n_heads * 8 * 9 // 2
    assert (planted_patterns["key_position"] <= planted_patterns["position"]).all()
    sums = planted_patterns.groupby(["layer", "head", "position"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)      # each query's attention sums to 1
    layer, head = PLANTED_HEADS["previous_token"]
    prev = planted_patterns[(planted_patterns["layer"] == layer) & (planted_patterns["head"] == head)
                            & (planted_patterns["position"] > 0)]
    on_previous = prev[prev["key_position"] == prev["position"] - 1]
    assert on_previous["value"].min() > 0.99
    assert list(on_previous["key_token"]) == ["0", "3", "5", "7", "9", "11", "2"]


@pytest.mark.parametrize(("block", "expected"), [
    ("{max_tokens: 1000}", r"analyses\.patterns\.max_tokens: Input should be less than or equal to 128"),
    ("{layers: [-1]}", r"patterns\.layers \[-1\] has a negative layer; give layer indices from 0"),
    ("{texts: absent.jsonl}", r"absent\.jsonl"),
    ("{limit: 0}", r"analyses\.patterns\.limit: Input should be greater than or equal to 1"),
])
def test_patterns_bad_options_fail_in_one_line_before_loading(tmp_path, block, expected):
    from mechbench.errors import MechbenchError
    from mechbench.runner import plan_run

    config = tmp_path / "config.yaml"
    config.write_text(f"model: toy-planted\nstore: {tmp_path / 'store'}\nanalyses:\n  patterns: {block}\n")
    with pytest.raises(MechbenchError, match=expected) as info:
        plan_run(config, [])
    assert "\n" not in str(info.value) and not (tmp_path / "store").exists()


def test_patterns_layer_beyond_the_model_is_a_config_error(planted):
    from mechbench.analyses.patterns import PatternsConfig, run_patterns_from_config
    from mechbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^patterns\.layers \[5\] names layer 5, but toy-planted has layers 0\.\.1; "
                       r"give layers from 0 to 1$"):
        run_patterns_from_config(planted, PatternsConfig(layers=[5]), progress=False)


def test_explorer_has_every_head_and_the_exact_pattern(planted, planted_patterns):
    figure = attention_explorer(planted_patterns, "seq")
    steps = figure.layout.sliders[0].steps
    assert [s.label for s in steps] == [f"L{a}H{b}" for a in range(planted.n_layers) for b in range(planted.n_heads)]
    layer, head = PLANTED_HEADS["bos"]
    z = np.array(steps[layer * planted.n_heads + head].args[0]["z"][0], dtype=float)
    assert z.shape == (8, 8)
    np.testing.assert_allclose(z[:, 0], 1.0, atol=1e-4)             # the BOS head reads key 0 only
    assert np.isnan(z[0, 1:]).all()                                   # keys after the query: blank, not 0
    assert list(figure.layout.yaxis.ticktext) == ["0", "3", "5", "7", "9", "11", "2", "4"]


def test_display_token_shows_markup_literally():
    assert display_token(" a\n") == "·a⏎"
    assert display_token("<b>&") == "&lt;b&gt;&amp;"


# ---------------------------------------------------------------------------------------------- the page
def evil_patterns() -> pd.DataFrame:
    """A two-token pattern whose second token is markup: the report must show it, never run it."""
    import torch

    pattern = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    out = pattern_rows(pattern, ["<s>", EVIL])
    return out.assign(layer=0, example="evil", metric="attention", analysis="patterns", model="m", run_id="r")


def test_render_report_escapes_and_covers_every_analysis(planted_patterns):
    sinks = rows("sinks", "sink_score_mean", {(0, h): h / 4 for h in range(4)}, position=0)
    tokens = pd.DataFrame([{"analysis": "sinks", "metric": "hidden_sink_token", "model": "m", "run_id": "r",
                            "token": EVIL, "value": 3.0, "n_heads": 2}])
    frame = frame_of(sinks, tokens, planted_patterns.assign(run_id="r"), evil_patterns())
    page = render_report(frame, {"run_id": "r", "model": "m", "status": "complete", "command": [EVIL]})
    assert "<script>alert" not in page
    assert 'id="page-sinks"' in page and 'id="page-patterns"' in page and 'id="page-all-heads"' in page
    assert page.count("Plotly.newPlot") == page.count('<div class="figure">')
    assert page.count("* plotly.js v") == 1                            # plotly.js inlined once, offline


@pytest.mark.browser
def test_report_renders_in_chromium_without_errors(tmp_path, tiny_llama_dir):
    """A real run's report in headless Chromium: no console or page error, every figure drawn with
    axis labels, tokens shown (markup literally, never executed), the head table sorts on click."""
    from playwright.sync_api import sync_playwright

    from mechbench.runner import plan_run, run_plan

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the browser test: apt-get install chromium (make setup does)"
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_llama_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n"
                      "  sinks: {max_tokens: 12, limit: 3}\n  patterns: {limit: 1, max_tokens: 10}\n")
    result = run_plan(plan_run(config, [], run_id="b1"), progress=False, write_report_file=False)
    store = ResultStore(result.store_root)
    store.write(conform(evil_patterns().assign(run_id="b1", model=store.read(run_id="b1")["model"].iloc[0])),
                shard="evil")
    from mechbench.report import write_report

    path = write_report(store, "b1")
    problems: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(600_000)
            page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(path.as_uri(), wait_until="load")
            n_figures = page.locator("div.figure").count()
            page.wait_for_function(f"document.querySelectorAll('div.figure .main-svg').length >= {n_figures}")
            assert n_figures >= 6
            drawn = page.evaluate("""() => Array.from(document.querySelectorAll('div.figure .js-plotly-plot'))
                .map(p => ({title: p.layout.title.text || '', x: (p.layout.xaxis || {}).title?.text || '',
                            kind: p.data[0].type}))""")
            assert len(drawn) == n_figures
            for figure in drawn:
                assert figure["title"], figure
                if figure["kind"] != "table":
                    assert figure["x"], figure
            ticks = page.locator("#page-patterns .ytick text").all_text_contents()
            assert EVIL.replace(" ", "·") in ticks                       # shown literally ...
            assert not dialogs                                          # ... and never run
            header = page.locator("#heads th").nth(2)
            header.click()
            header.click()                                              # descending, then ascending
            column = page.locator("#heads tbody tr td:nth-child(3)").all_text_contents()
            values = [float(v) for v in column if v]
            assert values == sorted(values)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert os.path.getsize(tmp_path / "report.png") > 50_000


# ---------------------------------------------------------------------------------------------- notebooks
def test_quickstart_notebook(tmp_path, tiny_llama, tiny_llama_dir, run_notebook):
    shown = run_notebook("00_quickstart.ipynb", tmp_path / "store", {'"smollm2-135m"': repr(str(tiny_llama_dir))})
    explorer, heatmap = shown
    assert len(explorer.layout.sliders[0].steps) == tiny_llama.n_layers * tiny_llama.n_heads
    z = np.array(explorer.data[0].z, dtype=float)
    # each query's attention sums to 1, up to the explorer's rounding to 4 decimals (<= L x 5e-5)
    np.testing.assert_allclose(np.nansum(z, axis=1), 1.0, atol=z.shape[1] * 5e-5)
    sink = np.array(heatmap.data[0].z, dtype=float)
    assert sink.shape == (tiny_llama.n_layers, tiny_llama.n_heads) and ((sink >= 0) & (sink <= 1)).all()


def test_compare_models_notebook_runs_missing_analyses_once(tmp_path, tiny_llama_dir, run_notebook):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other-llama", seed=1)
    config = tmp_path / "config.yaml"
    config.write_text("analyses:\n  sinks: {max_tokens: 12, limit: 3}\n")
    replace = {'["smollm2-135m", "gemma3-270m"]': repr([str(tiny_llama_dir), str(other)]),
               '"../configs/default.yaml"': repr(str(config))}
    shown = run_notebook("compare_models.ipynb", tmp_path / "store", replace)
    summary = run_notebook.namespace["summary"]
    shared = run_notebook.namespace["shared"]
    assert "sinks: sink_score_mean [position 0]" in shared
    assert len(shown) == 2 * len(shared) and len(summary) == 2 * len(shared)
    store = ResultStore(tmp_path / "store")
    assert len(store.manifests()) == 2
    run_notebook("compare_models.ipynb", tmp_path / "store", replace)
    assert len(store.manifests()) == 2                                   # the second time reuses both runs
    model = str(tiny_llama_dir)  # runs that start in the same second sort by their random suffix: pick by model
    row = summary[(summary["metric"] == "sinks: sink_score_mean [position 0]") & (summary["model"] == model)].iloc[0]
    frame = store.read(run_id=next(m["run_id"] for m in store.manifests() if m["model"] == model))
    values = frame[(frame["metric"] == "sink_score_mean") & (frame["position"] == 0)]["value"]
    assert row["max"] == pytest.approx(values.max()) and row["mean"] == pytest.approx(values.mean())
