"""Sweeps: expansion into shards with stable ids, resource hints, the local and Ray executors, resume.

The sweep runs are ``configs/sweep-toy.yaml`` (2 analyses x 2 models, 12 shards) with two tiny Llamas of
different seeds in place of its real models. Ground truth for the Ray executor is the local one: the two
tables must be equal to the last bit, also when a Ray worker is killed in the middle of a shard.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import build_tiny_llama
from typer.testing import CliRunner

from mechbench import executors
from mechbench.analyses import ANALYSES, AnalysisSpec
from mechbench.cli import app
from mechbench.config import load_config, parse_config
from mechbench.errors import ConfigError
from mechbench.executors import LocalExecutor
from mechbench.runner import ShardsFailedError, plan_sweep, run_sweep
from mechbench.store import ResultStore
from mechbench.store.sweep_store import SweepStore
from mechbench.sweep import expand_sweep, parameter_count, resource_hints, shard_resources, shard_slice

REPO = Path(__file__).resolve().parents[1]
SWEEP_CONFIG = REPO / "configs" / "sweep-toy.yaml"
KEYS = ["analysis", "model", "shard", "metric", "example", "layer", "head", "position"]


@pytest.fixture(scope="module")
def two_models(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two tiny Llamas (seeds 0 and 1): different weights, so their rows differ."""
    return [str(tiny_llama_dir), str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-b"), seed=1))]


def toy_config(tmp_path: Path, models: list[str], store: str | None = None, **sweep: object) -> Path:
    """configs/sweep-toy.yaml with ``models`` (and ``sweep`` entries) in place of its own, into ``store``."""
    data = yaml.safe_load(SWEEP_CONFIG.read_text())
    data["store"] = store or str(tmp_path / "store")
    data["sweep"].update(models=models, **sweep)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A sweep's rows without the run id, in a fixed order."""
    return frame.drop(columns="run_id").sort_values(KEYS, kind="stable").reset_index(drop=True)


def break_patterns(monkeypatch: pytest.MonkeyPatch) -> AnalysisSpec:
    """Make the ``patterns`` analysis of this process raise; return the real one."""
    patterns = ANALYSES["patterns"]

    def broken(model: object, options: object, progress: bool) -> pd.DataFrame:
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(ANALYSES, "patterns", dataclasses.replace(patterns, run=broken))
    return patterns


def test_expansion_is_deterministic_with_stable_readable_ids():
    run_config, analyses = load_config(SWEEP_CONFIG)
    shards = expand_sweep(run_config, analyses)
    assert [s.shard_id for s in shards] == [s.shard_id for s in expand_sweep(*load_config(SWEEP_CONFIG))]
    assert len(shards) == 2 * (2 * 2 + 2) and len({s.shard_id for s in shards}) == 12
    # the id is a function of model, analysis, options and slice only: pinned, so a change is seen
    assert shards[0].shard_id == "smollm2-135m.sinks.L32.s0of2-995d7c55efaf"  # since sinks gained `attention`
    assert shards[0].options["max_tokens"] == 32 and shards[2].options["max_tokens"] == 64
    assert [s.shard_id.rsplit("-", 1)[0] for s in shards[4:6]] == ["smollm2-135m.patterns.s0of2",
                                                                    "smollm2-135m.patterns.s1of2"]
    # another patterns option changes the patterns ids and no others
    data = yaml.safe_load(SWEEP_CONFIG.read_text())
    data["analyses"]["patterns"]["max_tokens"] = 12
    changed = expand_sweep(*parse_config(data))
    differ = {a.shard_id for a, b in zip(shards, changed, strict=True) if a.shard_id != b.shard_id}
    assert differ == {s.shard_id for s in shards if s.analysis == "patterns"}


def test_shard_slices_cover_every_text_once_in_order():
    for n_items in range(1, 12):
        for count in range(1, n_items + 1):
            parts = [list(range(n_items))[shard_slice(n_items, i, count)] for i in range(count)]
            assert list(itertools.chain(*parts)) == list(range(n_items))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_resource_hints_follow_the_documented_formula():
    gib = 2**30
    assert parameter_count("smollm2-135m") == 135e6
    assert parameter_count("meta-llama/Llama-2-7b-hf") == 7e9
    assert parameter_count("/models/Qwen2.5-0.5B-Instruct") == 0.5e9
    assert parameter_count("/models/mystery") == 1e9
    # 7B in bfloat16 at 32k tokens: 1 GiB + 2*7e9*2 B + 4*32*32768^2 B = 1 + 26.08 + 128 GiB -> 156 GiB
    hints = resource_hints(7e9, 32768, "bfloat16", "cuda")
    assert (hints.num_cpus, hints.num_gpus, hints.memory) == (1.0, 1.0, 156 * gib)
    # 135M in float32 at 64 tokens: 1 GiB + 1.006 GiB + 0.5 MiB -> 3 GiB
    assert resource_hints(135e6, 64).ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0, "memory": 3 * gib}
    data = yaml.safe_load(SWEEP_CONFIG.read_text())
    data["sweep"]["resources"] = {"num_gpus": 0.5, "memory_gb": 3}
    run_config, analyses = parse_config(data)
    hints = shard_resources(expand_sweep(run_config, analyses)[0], run_config)
    assert (hints.num_cpus, hints.num_gpus, hints.memory) == (1.0, 0.5, 3 * gib)


@pytest.mark.parametrize(("sweep", "expected"), [
    ({"shards": {"retrieval": 2}}, r"sweep\.shards\.retrieval: analysis 'retrieval' is not run in this sweep"),
    ({"shards": {"sinks": 9}}, r"sweep\.shards\.sinks: 9 shards, but texts 'builtin' has only 8; lower"),
    ({"context_lengths": {"patterns": [200]}}, r"analyses\.patterns\.max_tokens: Input should be less than or "
                                               r"equal to 128 \(got 200\)"),
    ({"models": []}, r"sweep\.models: List should have at least 1 item"),
    ({"models": ["a", "a"]}, r"sweep\.models names a model twice"),
    ({"shards": {"sinks": 0}}, r"sweep\.shards\.sinks: Input should be greater than 0"),
])
def test_bad_sweep_specs_are_one_line_config_errors(tmp_path, sweep, expected):
    result = invoke("analyze", "--config", str(toy_config(tmp_path, **{"models": ["toy-planted"], **sweep})))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and __import__("re").search(expected, lines[0]), lines
    assert not (tmp_path / "store").exists()


def test_a_shard_of_an_analysis_that_cannot_split_is_refused(tmp_path):
    data = {"model": "toy-planted", "analyses": {"circuits": {}}, "sweep": {"models": ["toy-planted"],
                                                                          "shards": {"circuits": 2}}}
    with pytest.raises(ConfigError, match=r"^sweep\.shards\.circuits: circuits cannot be split by shards; analyses "
                                        r"that can: patterns, sinks, tappa$"):
        expand_sweep(*parse_config(data))


def test_local_sweep_resumes_only_the_failed_shards(tmp_path, two_models, monkeypatch):
    """A shard that fails leaves the others written; --resume runs just it, with one model load per model."""
    run_config, analyses = load_config(toy_config(tmp_path, two_models))
    monkeypatch.setattr(executors, "_MODELS", {})
    patterns = break_patterns(monkeypatch)
    with pytest.raises(ShardsFailedError, match=r"^4 of 12 shards failed \(first: tiny-llama"):
        run_sweep(plan_sweep(run_config, analyses, "r1", None), LocalExecutor())
    store = SweepStore(str(tmp_path / "store"))
    manifest = store.manifest("r1")
    assert manifest["status"] == "failed" and len(store.completed_shards("r1")) == 8
    assert {r["status"] for r in manifest["shards"]["patterns"].values()} == {"failed"}
    assert "disk on fire" in next(iter(manifest["shards"]["patterns"].values()))["error"]

    monkeypatch.setitem(ANALYSES, "patterns", patterns)
    monkeypatch.setattr(executors, "_MODELS", {})
    result = run_sweep(plan_sweep(run_config, analyses, None, "r1"), LocalExecutor())
    assert result.skipped == 8 and sorted(s.split(".")[1] for s in result.records) == ["patterns"] * 4
    assert result.model_loads == 2  # each model once, reused by its second shard
    manifest = store.manifest("r1")
    assert manifest["status"] == "complete" and len(manifest["resumed_at"]) == 1
    assert all(r["attempts"] == 2 for r in manifest["shards"]["patterns"].values())
    assert all(r["attempts"] == 1 for r in manifest["shards"]["sinks"].values())

    again = run_sweep(plan_sweep(run_config, analyses, None, "r1"), LocalExecutor())  # nothing left to do
    assert again.skipped == 12 and again.records == {}

    shown = invoke("show", "--store", str(tmp_path / "store"), "--run", "r1", "--top", "1").output.splitlines()
    assert [line.split(":")[0] for line in shown[::2]] == [f"sinks (run r1, model {m})" for m in sorted(two_models)]
    refused = invoke("report", "--store", str(tmp_path / "store"), "--run", "r1")
    assert refused.exit_code == 2 and refused.output.startswith("error: run 'r1' is a sweep (2 models, 12 shards)")


def test_resume_refuses_another_config(tmp_path, two_models):
    run_config, analyses = load_config(toy_config(tmp_path, two_models[:1], shards={"sinks": 2}))
    store = SweepStore(str(tmp_path / "store"))
    store.ensure_format()
    store.write_manifest({"run_id": "r1", "shards": {}, "status": "failed", "config": {"seed": 1}})
    with pytest.raises(ConfigError, match=r"^run 'r1' was made with another config \(differs in .*seed"):
        plan_sweep(run_config, analyses, None, "r1")


def test_memory_url_store_holds_the_same_table_as_a_directory(tmp_path, two_models):
    """An fsspec URL store (memory://) gets exactly the rows a directory store gets; one model here."""
    tables = []
    for store in (str(tmp_path / "store"), "memory://mechbench-test/store"):
        run_config, analyses = load_config(toy_config(tmp_path, two_models[:1], store=store))
        result = run_sweep(plan_sweep(run_config, analyses, "m1", None), LocalExecutor())
        assert len(result.records) == 6
        tables.append(sweep_table(SweepStore(store).read("m1")))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert SweepStore("memory://mechbench-test/store").manifest("m1")["status"] == "complete"


def test_ray_sweep_equals_local_and_survives_a_killed_worker(tmp_path, two_models, monkeypatch):
    """2 analyses x 2 models x 2 task shards (x 2 context lengths for sinks) on a 2-CPU local Ray; the first
    patterns shard's worker dies mid-shard: Ray reruns it, nothing is lost, the table equals the local one.
    Then a local run whose patterns shards failed is finished on Ray with --resume."""
    ray = pytest.importorskip("ray")
    config = toy_config(tmp_path, two_models)
    local = invoke("analyze", "--config", str(config), "--run-id", "local")
    assert local.exit_code == 0, local.output
    with monkeypatch.context() as patch:
        break_patterns(patch)
        partial = invoke("analyze", "--config", str(config), "--run-id", "mixed")
    assert partial.exit_code == 2 and "error: 4 of 12 shards failed" in partial.output
    marker = tmp_path / "crashed"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", runtime_env={
        "worker_process_setup_hook": "sweep_faults.crash_first_patterns_shard",
        "env_vars": {"MECHBENCH_TEST_CRASH_MARKER": str(marker), "OMP_NUM_THREADS": "1",
                     "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])},
    })
    try:
        result = invoke("analyze", "--config", str(config), "--run-id", "ray", "--executor", "ray")
        resumed = invoke("analyze", "--config", str(config), "--resume", "mixed", "--executor", "ray")
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert resumed.exit_code == 0 and "rows from 4 shards (8 already written" in resumed.output, resumed.output
    assert marker.exists()  # a worker did die
    store = ResultStore(tmp_path / "store")
    pd.testing.assert_frame_equal(sweep_table(store.read(run_id="ray")), sweep_table(store.read(run_id="local")))
    manifest = store.manifest("ray")
    records = {sid: r for shards in manifest["shards"].values() for sid, r in shards.items()}
    assert len(records) == 12 and {r["status"] for r in records.values()} == {"complete"}
    retried = [sid for sid, r in records.items() if r["attempts"] == 2]
    assert len(retried) == 1 and ".patterns." in retried[0]
    assert all(r["attempts"] == 1 for sid, r in records.items() if sid not in retried)
    assert all(r["worker"]["ray_node_id"] and r["worker"]["pid"] != os.getpid() for r in records.values())
    # shards go out grouped by model and a worker keeps the model it holds: each worker loads at most both
    # models, plus once more for the retried shard, which is queued last (without reuse: 12 loads)
    loads = sum(r["model_loaded"] for r in records.values())
    workers = {r["worker"]["pid"] for r in records.values()}
    assert len(workers) <= loads <= 2 * len(workers) + 1 < len(records)
    assert manifest["executor"] == "ray" and manifest["status"] == "complete"

    pd.testing.assert_frame_equal(sweep_table(store.read(run_id="mixed")), sweep_table(store.read(run_id="local")))
    mixed = store.manifest("mixed")
    ran_by = {a: {r["worker"].get("ray_node_id") is not None for r in shards.values()}
              for a, shards in mixed["shards"].items()}
    assert ran_by == {"sinks": {False}, "patterns": {True}} and mixed["status"] == "complete"


def test_local_executor_needs_no_ray(tmp_path, tiny_llama_dir):
    """With ``import ray`` failing, a sweep runs locally and --executor ray is one line naming the extra."""
    config = toy_config(tmp_path, [str(tiny_llama_dir)], shards={"sinks": 2, "patterns": 1},
                        context_lengths={"sinks": [16]})
    script = f"""
import json, sys
sys.modules["ray"] = None  # import ray raises ImportError, as when it is not installed
from typer.testing import CliRunner
from mechbench.cli import app
ray = CliRunner().invoke(app, ["analyze", "--config", {str(config)!r}, "--executor", "ray"])
local = CliRunner().invoke(app, ["analyze", "--config", {str(config)!r}, "--run-id", "plain"])
print(json.dumps({{"ray": [ray.exit_code, ray.output], "local": [local.exit_code, local.output],
                  "blocked": sys.modules["ray"] is None}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                         check=True).stdout
    answer = json.loads(out.splitlines()[-1])
    assert answer["ray"] == [2, "error: --executor ray needs Ray, an optional extra: pip install 'mechbench[ray]'\n"]
    assert answer["local"][0] == 0, answer["local"][1]
    assert "run plain: " in answer["local"][1] and "from 3 shards" in answer["local"][1] and answer["blocked"]
    assert set(ResultStore(tmp_path / "store").read(run_id="plain")["analysis"]) == {"sinks", "patterns"}
