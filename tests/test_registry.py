"""The analysis registry: discovery of the packages' specs, aliases, and an analysis added from a package
of its own (through the ``mechbench.analyses`` entry point) without touching any file of mechbench."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechbench.analyses import ANALYSES, AnalysisSpec, Registry

EXAMPLE_PACKAGE = '''
"""Example analysis: the mean attention each head pays to the first position (a sink score)."""

from __future__ import annotations

import pandas as pd
import torch
from pydantic import Field
from torch import Tensor

from mechbench.analyses import AnalysisSpec
from mechbench.config import StrictModel
from mechbench.core.dataset import Batch
from mechbench.core.hooked import HookedModel
from mechbench.core.recorder import Recorder
from mechbench.core.tidy import finish_rows, to_tidy

FIRST_POSITION_ATTENTION = "first_position_attention"


def first_position_attention(pattern: Tensor, lengths: Tensor) -> Tensor:
    """``[batch, head, q, k]`` -> ``[head]``: the mean over real queries of ``A[q, 0]``."""
    rows = torch.arange(pattern.shape[2])[None, :] < lengths[:, None]
    return (pattern[..., 0] * rows[:, None]).sum((0, 2)) / rows.sum()


class ExampleConfig(StrictModel):
    sequences: list[list[int]] = Field(description="token-id sequences")


def run_example(model: HookedModel, config: ExampleConfig, progress: bool = True) -> pd.DataFrame:
    dataset = model.tokenize_dataset(config.sequences)
    per_layer: dict[int, Tensor] = {}

    def keep(layer: int, pattern: Tensor, batch: Batch) -> None:
        per_layer[layer] = first_position_attention(pattern, batch.lengths)

    Recorder(model, batch_size=len(dataset), progress=progress).run(dataset, {"pattern": keep})
    scores = torch.stack([per_layer[layer] for layer in range(model.n_layers)])
    frame = to_tidy(scores, ("layer", "head"), metric=FIRST_POSITION_ATTENTION)
    return finish_rows(frame, "example", model.name)


SPEC = AnalysisSpec(
    name="example", description="mean attention to the first position", citation="Xiao et al. 2023",
    config_model=ExampleConfig, run=run_example, headline_metrics=(FIRST_POSITION_ATTENTION,),
    aliases=("example_alias",))
'''


def test_discovery_finds_every_analysis_package():
    import pkgutil

    import mechbench.analyses as package

    packages = {module.name for module in pkgutil.iter_modules(package.__path__) if module.ispkg}
    assert packages <= set(ANALYSES)
    assert {"sinks", "retrieval", "tappa", "waad_fai", "circuits", "attribution", "patterns", "speech"} <= packages
    for name in packages:
        spec = ANALYSES[name]
        assert spec.name == name and spec.headline_metrics is not None


def test_aliases_resolve_and_duplicates_are_refused():
    registry = Registry()
    spec = AnalysisSpec(name="waad_fai_x", description="", citation="", config_model=ANALYSES["sinks"].config_model,
                        run=ANALYSES["sinks"].run, headline_metrics=(), aliases=("distance_x",))
    registry.register(spec)
    assert registry["distance_x"] is spec and "distance_x" in registry
    assert registry.canonical("distance_x") == "waad_fai_x"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec)
    with pytest.raises(ValueError, match="'distance_x' is already registered"):
        registry.register(AnalysisSpec(**{**spec.__dict__, "name": "other", "aliases": ("distance_x",)}))


def test_importing_an_analysis_loads_no_plotting_and_no_other_analysis():
    code = textwrap.dedent("""
        import importlib, sys
        name = sys.argv[1]
        importlib.import_module(f"mechbench.analyses.{name}.metrics")
        assert "plotly" not in sys.modules, name
        others = {m.split(".")[2] for m in sys.modules if m.startswith("mechbench.analyses.")} - {name}
        assert not others, (name, others)
    """)
    for name in ("sinks", "retrieval", "tappa", "waad_fai", "circuits", "attribution", "patterns", "speech",
                 "head_roles"):
        done = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]


def test_an_analysis_in_its_own_package_runs_from_the_cli(tmp_path):
    """A package and its entry point on the path are all it takes: no file of mechbench changes."""
    site = tmp_path / "site"
    (site / "mechbench_example").mkdir(parents=True)
    (site / "mechbench_example" / "__init__.py").write_text(EXAMPLE_PACKAGE)
    info = site / "mechbench_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mechbench-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mechbench.analyses]\nexample = mechbench_example:SPEC\n")
    config = tmp_path / "example.yaml"
    store = tmp_path / "store"
    sequences = [[0, 3, 5, 7, 9, 3, 5, 7], [0, 2, 4, 6, 8, 10, 2, 4, 6, 8]]
    config.write_text(f"model: toy-planted\nstore: {store}\nanalyses:\n  example_alias: {{sequences: {sequences}}}\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    mechbench = Path(sys.executable).with_name("mechbench")
    done = subprocess.run([str(mechbench), "analyze", "--config", str(config), "--run-id", "ex"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from mechbench.store.result_store import ResultStore

    frame = ResultStore(str(store)).read(analysis="example", run_id="ex")
    scores = {(int(r.layer), int(r.head)): r.value for r in frame.itertuples()}
    # toy-planted: the BOS head 0.0 and the delimiter head 1.2 (no delimiter in these sequences) rest on
    # position 0; the uniform heads give it 1 / (q + 1) on average, the others less
    assert len(scores) == 8 and {key for key, v in scores.items() if v > 0.9} == {(0, 0), (1, 2)}
    assert scores[(0, 0)] == pytest.approx(1.0, abs=1e-6)
    shown = subprocess.run([str(mechbench), "show", "--store", str(store), "--analysis", "example", "--top", "1"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "L0" in shown.stdout, shown.stdout + shown.stderr
