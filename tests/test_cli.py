"""The CLI end to end on a tiny local model, and its one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mechbench.cli import app
from mechbench.store import ResultStore

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def config_file(tmp_path, model: str, sinks: str = "{}", store: str | None = None) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(f"model: {model}\nstore: {store or tmp_path / 'store'}\nanalyses:\n  sinks: {sinks}\n")
    return str(path)


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert __import__("re").search(pattern, lines[0]), lines[0]


def test_models_lists_the_zoo():
    result = invoke("models")
    assert result.exit_code == 0
    for name in ("smollm2-135m", "gemma3-270m", "minilm-l6", "toy-planted", "toy-induction"):
        assert name in result.output
    assert "installed" in result.output


def test_analyze_end_to_end_show_report_resume(tmp_path, tiny_llama_dir):
    store_dir = tmp_path / "store"
    config = config_file(tmp_path, str(tiny_llama_dir), "{max_tokens: 16, batch_size: 3}")
    result = invoke("analyze", "--config", config, "--run-id", "t1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "run t1:" in result.output and "report:" in result.output
    store = ResultStore(store_dir)
    frame = store.read(analysis="sinks", run_id="t1")
    per_example = frame[frame["metric"] == "sink_score"]
    assert per_example["example"].nunique() == 8 and per_example["position"].max() == 15
    assert per_example["token"].notna().all()
    manifest = store.manifest("t1")
    assert manifest == json.loads((store_dir / "runs" / "t1.json").read_text())  # plain JSON on disk
    assert manifest["architecture"]["n_kv_heads"] == 2 and manifest["seed"] == 0
    assert manifest["status"] == "complete" and len(manifest["weights_sha256"]) == 64
    assert manifest["config"]["analyses"]["sinks"]["max_tokens"] == 16
    assert manifest["versions"]["torch"].startswith("2.13")
    report = store_dir / "reports" / "t1.html"
    html = report.read_text()
    assert "Plotly" in html and '<script src="http' not in html  # plotly.js inlined: works offline

    shown = invoke("show", "--store", str(store_dir), "--top", "3")
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert "top 3 heads by sink_score_mean at position 0" in lines[0]
    best = frame[(frame["metric"] == "sink_score_mean") & (frame["position"] == 0)]["value"].max()
    assert f"{best:.4f}" in lines[1]

    again = invoke("analyze", "--config", config, "--resume", "t1", "--no-progress", "--no-report")
    assert again.exit_code == 0 and "nothing new" in again.output
    assert len(ResultStore(store_dir).read(run_id="t1")) == len(frame)
    assert_one_line_error(invoke("analyze", "--config", config, "--run-id", "t1"), "already exists")
    (tmp_path / "other").mkdir()
    other = config_file(tmp_path / "other", str(tiny_llama_dir), "{max_tokens: 8}", store=str(store_dir))
    assert_one_line_error(invoke("analyze", "--config", other, "--resume", "t1"), r"ran analyses\.sinks with")

    per_example = invoke("show", "--store", str(store_dir), "--metric", "sink_score", "--top", "40")
    heads = [tuple(line.split()[:2]) for line in per_example.output.splitlines()[1:]]
    assert len(heads) == len(set(heads)) == 8  # 2 layers x 4 heads, each once (averaged over examples)
    assert_one_line_error(invoke("show", "--store", str(store_dir), "--metric", "sink_rate"), "no per-head rows")


def test_determinism_same_config_same_table(tmp_path, tiny_llama_dir):
    config = config_file(tmp_path, str(tiny_llama_dir), "{max_tokens: 12, limit: 3}")
    for run in ("a", "b"):
        assert invoke("analyze", "--config", config, "--run-id", run, "--no-progress", "--no-report").exit_code == 0
    store = ResultStore(tmp_path / "store")
    a = store.read(run_id="a").drop(columns="run_id")
    b = store.read(run_id="b").drop(columns="run_id")
    assert a.equals(b)


@pytest.mark.parametrize(("sinks", "pattern"), [
    ("{texts: EMPTY}", r"text set .* is empty"),
    ("{texts: LONG, max_tokens: 1000}", r"has \d+ tokens, longer than the context window .* \(64\)"),
    ("{texts: /no/such/file.jsonl}", r"not found"),
])
def test_dataset_errors_are_one_line(tmp_path, tiny_llama_dir, sinks, pattern):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["the cat sat on the mat ."] * 30))
    sinks = sinks.replace("EMPTY", str(empty)).replace("LONG", str(long))
    result = invoke("analyze", "--config", config_file(tmp_path, str(tiny_llama_dir), sinks), "--no-progress")
    assert_one_line_error(result, pattern)
    manifests = ResultStore(tmp_path / "store").manifests() if (tmp_path / "store").exists() else []
    assert all(m["status"] == "failed" for m in manifests)  # never a half-written "complete" run


def test_unknown_model_is_one_line(tmp_path):
    result = invoke("analyze", "--config", config_file(tmp_path, "gpt-17"), "--no-progress")
    assert_one_line_error(result, r"unknown model 'gpt-17'.*known models: smollm2-135m")


def test_malformed_config_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: smollm2-135m\nanalyses:\n  sinks:\n    epsilon: high\n")
    assert_one_line_error(invoke("analyze", "--config", str(path)),
                          r"analyses\.sinks\.epsilon: Input should be a valid number")


def test_unknown_analysis_on_the_command_line(tmp_path):
    assert_one_line_error(invoke("analyze", "circuit", "--config", config_file(tmp_path, "toy-planted")),
                          r"unknown analysis 'circuit'; available: attribution, circuits, head_roles, patterns, "
                          r"retrieval, sinks, speech, tappa, waad_fai")


def test_show_without_store(tmp_path):
    assert_one_line_error(invoke("show", "--store", str(tmp_path / "none")), r"no result store")
    (tmp_path / "file").write_text("not a store")
    for command in ("show", "report"):
        assert_one_line_error(invoke(command, "--store", str(tmp_path / "file")), r"no result store at .*file; run")


def test_sinks_notebook_runs_on_a_store(tmp_path, tiny_llama_dir, run_notebook):
    """Every code cell of notebooks/attention_sinks.ipynb runs against a real store (figures not shown)."""
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps({"text": t, "label": label}) for t, label in
                              [("the cat", "small"), ("a big dog", "big"), ("the mat", "small"), ("a house", "big")]))
    sinks = (f"{{max_tokens: 16, calibration: {{task: {task}, template: '{{text}} is', labels: [small, big], "
             "calibration_size: 2, layers: [1]}, streaming: {max_tokens: 60, start_size: 2, recent_size: 8}}")
    result = invoke("analyze", "--config", config_file(tmp_path, str(tiny_llama_dir), sinks), "--no-progress")
    assert result.exit_code == 0, result.output
    shown = run_notebook("attention_sinks.ipynb", tmp_path / "store")
    assert len(shown) == 8  # 2 sink plots, 2 hidden-sink plots, massive profile, 2 ACT plots, streaming
    assert all(len(figure.data) > 0 for figure in shown)


def test_show_ranks_by_the_first_headline_metric_the_run_wrote(tmp_path):
    """A circuits run without activation patching (the first headline) is ranked by attribution patching,
    in `show` and in the report, instead of failing after the run."""
    import pandas as pd

    from mechbench.report import write_report

    store = ResultStore(tmp_path / "store")
    store.start_run("c", {"model": "m", "config": {"seed": 0}})
    rows = pd.DataFrame({"run_id": "c", "analysis": "circuits", "model": "m", "metric": "attr_patch", "task": "ioi",
                         "layer": [0, 0, 1], "head": [0, 1, 0], "value": [0.1, 0.9, 0.5]})
    store.write(pd.concat([rows, rows.assign(metric="dla", value=[3.0, 2.0, 1.0])]))
    store.finish_run("c", "complete")
    result = invoke("show", "--store", str(tmp_path / "store"), "--top", "2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["circuits (run c, model m): top 2 heads by attr_patch",
                                          "  L0   H1   0.9000", "  L1   H0   0.5000"]
    assert "Top heads by attr_patch" in write_report(store, "c").read_text()
