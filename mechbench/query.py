"""Querying a store's runs: the latest run of an analysis or model, the top heads of a run, whether a run
can be reported. What :mod:`mechbench.runner` does once rows are written, and what ``mechbench show`` and
``mechbench report`` ask before reading them."""

from __future__ import annotations

from typing import Any

from mechbench.analyses import ANALYSES
from mechbench.errors import StoreError
from mechbench.report import top_heads
from mechbench.store.result_store import ResultStore, stored_names


def latest_run(store: ResultStore, analysis: str | None = None, model: str | None = None,
               complete_only: bool = False) -> str:
    """Id of the most recently started run in a store; only runs that wrote rows of ``analysis``, ran
    ``model`` or (``complete_only``) finished, when asked."""
    if not store.root.is_dir():
        raise StoreError(f"no result store at {store.root}; run `mechbench analyze` first or pass --store")
    manifests = store.manifests()
    if not manifests:
        raise StoreError(f"no runs in {store.root}; run `mechbench analyze` first or pass --store")
    wanted = [m for m in manifests
              if (analysis is None or any(name in m.get("shards", {}) for name in stored_names(analysis)))
              and (model is None or m.get("model") == model)
              and (not complete_only or m.get("status") == "complete")]
    if not wanted:
        words = ["no", *(["complete"] if complete_only else []), *([repr(analysis)] if analysis else []), "run"]
        of_model = f" of model {model!r}" if model else ""
        command = " ".join(["mechbench analyze", *([analysis] if analysis else [])])
        raise StoreError(f"{' '.join(words)}{of_model} in {store.root}; run `{command}` first")
    return str(wanted[-1]["run_id"])


def top_heads_lines(store_path: str, analysis: str | None = None, metric: str | None = None,
                    position: int | None = None, top: int = 10, run_id: str | None = None) -> list[str]:
    """Human-readable top-head tables for each analysis of a run."""
    store = ResultStore(store_path)
    run = run_id or latest_run(store)
    frame = store.read(run_id=run, analysis=analysis)
    if frame.empty:
        raise StoreError(f"run {run!r} has no rows{' for ' + analysis if analysis else ''} in {store.root}")
    lines = []
    for (name, _), rows in frame.groupby(["analysis", "model"], sort=True):  # a sweep has several models
        spec = ANALYSES.get(str(name))
        chosen_metric = metric or (spec.headline_metric(rows["metric"]) if spec else str(rows["metric"].iloc[0]))
        if chosen_metric is None:
            if analysis is not None:
                raise StoreError(f"analysis {name!r} has no per-head ranking by default; pass --metric "
                                 f"(metrics: {', '.join(sorted(set(rows['metric'])))})")
            continue
        chosen_position = position if position is not None else (spec.headline_position if spec else None)
        if chosen_metric not in set(rows["metric"]):
            raise StoreError(f"metric {chosen_metric!r} not in analysis {name!r}; metrics: "
                             f"{', '.join(sorted(set(rows['metric'])))}")
        best = top_heads(rows, chosen_metric, chosen_position, top)
        if best.empty:
            raise StoreError(f"metric {chosen_metric!r} of analysis {name!r} has no per-head rows"
                             f"{'' if chosen_position is None else f' at position {chosen_position}'}")
        at = "" if chosen_position is None else f" at position {chosen_position}"
        lines.append(f"{name} (run {run}, model {rows['model'].iloc[0]}): top {len(best)} heads by "
                     f"{chosen_metric}{at}")
        lines += [f"  L{int(r.layer):<3} H{int(r.head):<3} {r.value:.4f}" for r in best.itertuples()]
    return lines


def check_reportable(manifest: dict[str, Any]) -> None:
    """Refuse an HTML report of a sweep: the report shows one model's run, a sweep has many models and shards."""
    if "models" in manifest:
        raise StoreError(f"run {manifest['run_id']!r} is a sweep ({len(manifest['models'])} models, "
                         f"{sum(map(len, manifest['shards'].values()))} shards); the HTML report covers one ordinary "
                         "run: use `mechbench show --run RUN` or ResultStore(store).read(run_id=RUN)")
