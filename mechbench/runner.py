"""Orchestration behind ``mechbench analyze`` and ``show``: plan, validate, run, store, summarise.

Everything that can be checked without a model (config, analysis names, store, run id) is checked
in :func:`plan_run`, before the (slow) model load, so bad input fails in a second with one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechbench.analyses import ANALYSES, unknown_analysis_message
from mechbench.config import RunConfig, StrictModel, load_config, parse_config, with_overrides
from mechbench.errors import ConfigError, MechbenchError, StoreError, one_line
from mechbench.executors import Executor, ShardJob
from mechbench.process import process_fingerprint
from mechbench.query import latest_run, top_heads_lines
from mechbench.report import write_report
from mechbench.store.result_store import ResultStore, check_name, new_run_id, utc_now
from mechbench.store.schema import STORE_FORMAT_VERSION
from mechbench.store.sweep_store import SweepStore, is_store_url
from mechbench.sweep import Shard, check_shard_datasets, expand_sweep

SHARD = "part-0"


@dataclass(frozen=True)
class RunPlan:
    """A validated run: config, chosen analyses with their options, store and run id."""

    config: RunConfig
    analyses: dict[str, StrictModel]
    store: ResultStore
    run_id: str


@dataclass
class RunResult:
    run_id: str
    store_root: Path
    analyses: list[str]
    n_rows: int
    summary: list[str] = field(default_factory=list)
    report_path: Path | None = None


def resolve_request(config_path: Path | None, analyses: list[str], model: str | None = None,
                    store: str | None = None, seed: int | None = None,
                    allow_pickle_weights: bool | None = None) -> tuple[RunConfig, dict[str, StrictModel]]:
    """The config with the command line's overrides, and the analyses to run with their checked options."""
    if config_path is not None:
        run_config, blocks = load_config(config_path)
    else:
        run_config, blocks = parse_config({"analyses": {"sinks": {}}}, "(built-in defaults)")
    given = (("model", model), ("store", store), ("seed", seed), ("allow_pickle_weights", allow_pickle_weights))
    overrides: dict[str, Any] = {k: v for k, v in given if v is not None}
    if model is not None and run_config.sweep is not None:  # --model runs the sweep on that one model
        overrides["sweep"] = run_config.sweep.model_copy(update={"models": [model]})
    if overrides:
        run_config = with_overrides(run_config, overrides)
    for name in analyses:
        if name not in ANALYSES:
            raise ConfigError(unknown_analysis_message(name))
    analyses = [ANALYSES.canonical(name) for name in analyses]  # an alias (distance) runs its analysis
    chosen = {name: blocks.get(name) or ANALYSES[name].config_model() for name in analyses} if analyses else blocks
    if not chosen:
        raise ConfigError("nothing to run: name analyses on the command line or under `analyses:` in the config "
                          f"(available: {', '.join(sorted(ANALYSES))})")
    for name, options in chosen.items():
        check = ANALYSES[name].check
        if check is not None:
            check(options)
    return run_config, chosen


def plan_run(config_path: Path | None, analyses: list[str], model: str | None = None, store: str | None = None,
             run_id: str | None = None, resume: str | None = None, seed: int | None = None,
             allow_pickle_weights: bool | None = None) -> RunPlan:
    """Validate the request and decide exactly what will run (``model``, ``store``, ``seed`` and
    ``allow_pickle_weights`` override the config's)."""
    run_config, chosen = resolve_request(config_path, analyses, model, store, seed, allow_pickle_weights)
    return plan_single(run_config, chosen, run_id, resume)


def check_run_choice(run_id: str | None, resume: str | None) -> None:
    """A run is new (``--run-id``) or resumed (``--resume``), not both."""
    if run_id and resume:
        raise ConfigError("give either --run-id or --resume, not both")


def plan_single(run_config: RunConfig, chosen: dict[str, StrictModel], run_id: str | None,
                resume: str | None) -> RunPlan:
    """The plan of an ordinary run (one model, one shard per analysis) into a local store."""
    check_run_choice(run_id, resume)
    result_store = ResultStore(run_config.store)
    if resume:
        check_resumable(result_store.manifest(resume), run_config, chosen)
    chosen_id = check_name("run id", resume or run_id or new_run_id())
    if run_id and (result_store.root / "runs" / f"{run_id}.json").exists():
        raise StoreError(f"run {run_id!r} already exists in {result_store.root}; choose another --run-id or "
                         f"--resume {run_id}")
    return RunPlan(run_config, chosen, result_store, chosen_id)


def refuse_if_running(manifest: dict[str, Any]) -> None:
    """Refuse to resume a run whose manifest says another process is still running it."""
    if manifest.get("status") == "running":
        owner = manifest.get("process") or {}
        raise StoreError(f"run {manifest['run_id']!r} is still running (process {owner.get('pid')} on "
                         f"{owner.get('host')}); wait for it to end or stop it, then resume it")


def check_resumable(manifest: dict[str, Any], config: RunConfig, analyses: dict[str, StrictModel]) -> None:
    """Refuse to resume a run another process is still running, or with another model, seed or analysis
    options (rows would mix configs)."""
    run_id = manifest["run_id"]
    refuse_if_running(manifest)
    stored = manifest.get("config") or {}
    if manifest.get("model") != config.model or stored.get("seed") != config.seed:
        raise ConfigError(f"run {run_id!r} was made with model {manifest.get('model')!r} and seed {stored.get('seed')}"
                          f", not {config.model!r} and {config.seed}; resume it with the same config")
    for name, options in analyses.items():
        before = stored.get("analyses", {}).get(name)
        if before is not None and before != options.model_dump():
            raise ConfigError(f"run {run_id!r} ran analyses.{name} with {before}, not {options.model_dump()}; "
                              "resume it with the same config or start a new run")


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: config, analyses, every shard, the store and the run id."""

    config: RunConfig
    analyses: dict[str, StrictModel]
    shards: list[Shard]
    store: SweepStore
    run_id: str


@dataclass
class SweepResult:
    """What one invocation of a sweep did: the shards it ran, how many it skipped, which failed."""

    run_id: str
    store_url: str
    records: dict[str, dict[str, Any]]  # shard id -> manifest record, of the shards run this time
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)  # shard id -> error

    @property
    def n_rows(self) -> int:
        return sum(r["rows"] for r in self.records.values())

    @property
    def model_loads(self) -> int:
        return sum(bool(r["model_loaded"]) for r in self.records.values())


class ShardsFailedError(MechbenchError):
    """Some shards of a sweep failed; the others are written and ``--resume`` reruns only the failed ones."""


def wants_sweep(config: RunConfig, executor: str) -> bool:
    """Whether a request runs as a sweep: a ``sweep`` block, ``--executor ray``, or a store URL."""
    return config.sweep is not None or executor != "local" or is_store_url(config.store)


def plan_sweep(run_config: RunConfig, chosen: dict[str, StrictModel], run_id: str | None,
               resume: str | None) -> SweepPlan:
    """Expand and check the sweep (a config without a ``sweep`` block is a sweep of its one model)."""
    check_run_choice(run_id, resume)
    shards = expand_sweep(run_config, chosen)
    check_shard_datasets(shards)
    store = SweepStore(run_config.store)
    chosen_id = check_name("run id", resume or run_id or new_run_id())
    if resume:
        check_sweep_resumable(store.manifest(resume), sweep_config_record(run_config, chosen))
    elif store.manifest_exists(chosen_id):
        raise StoreError(f"run {chosen_id!r} already exists in {store.url}; choose another --run-id or "
                         f"--resume {chosen_id}")
    return SweepPlan(run_config, chosen, shards, store, chosen_id)


def sweep_config_record(config: RunConfig, analyses: dict[str, StrictModel]) -> dict[str, Any]:
    """The config as a sweep manifest records it (JSON types), the store location left out."""
    record = {**config.model_dump(mode="json", exclude={"store"}),
              "analyses": {n: c.model_dump(mode="json") for n, c in analyses.items()}}
    return json.loads(json.dumps(record))


def check_sweep_resumable(manifest: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to resume a sweep whose driver still runs, or with another config (ids and rows would mix)."""
    run_id = manifest["run_id"]
    refuse_if_running(manifest)
    if manifest.get("config") != config:
        changed = sorted(k for k in {*config, *(manifest.get("config") or {})}
                         if config.get(k) != (manifest.get("config") or {}).get(k))
        raise ConfigError(f"run {run_id!r} was made with another config (differs in {', '.join(changed)}); resume "
                          "it with the same config or start a new run")


def run_sweep(plan: SweepPlan, executor: Executor, on_shard: Callable[[str], None] | None = None) -> SweepResult:
    """Run every shard not yet written (on ``executor``), keeping the manifest up to date as each ends."""
    from mechbench.provenance import git_commit, package_versions

    config, store = plan.config, plan.store
    store.ensure_format()
    done = store.completed_shards(plan.run_id)
    if store.manifest_exists(plan.run_id):  # plan_sweep allows that only with --resume
        manifest = store.manifest(plan.run_id)
        manifest["resumed_at"] = [*manifest.get("resumed_at", []), utc_now()]
    else:
        manifest = {"format_version": STORE_FORMAT_VERSION, "run_id": plan.run_id, "started_at": utc_now(),
                    "shards": {}, "resumed_at": [], "model": None}
    manifest.update(status="running", ended_at=None, error=None, process=process_fingerprint(),
                    executor=executor.name, config=sweep_config_record(config, plan.analyses), seed=config.seed,
                    models=config.sweep.models if config.sweep else [config.model], versions=package_versions(),
                    git_commit=git_commit(), command=sys.argv)
    store.write_manifest(manifest)
    pending = [s for s in plan.shards if s.shard_id not in done]
    result = SweepResult(plan.run_id, store.url, {}, skipped=len(plan.shards) - len(pending))
    job = ShardJob(plan.run_id, store.url, config.seed, config.device, config.dtype, config.allow_pickle_weights)
    try:
        for shard, outcome in executor.run(pending, job, config) if pending else ():
            place = {"model": shard.model, "index": shard.index, "count": shard.count,
                     "context_length": shard.context_length}
            if isinstance(outcome, BaseException):
                result.failed[shard.shard_id] = one_line(f"{outcome.__class__.__name__}: {outcome}")
                record = {**place, "status": "failed", "error": result.failed[shard.shard_id]}
            else:
                result.records[shard.shard_id] = record = {**place, **outcome}
            manifest["shards"].setdefault(shard.analysis, {})[shard.shard_id] = record
            store.write_manifest(manifest)
            if on_shard is not None:
                on_shard(shard_line(shard.shard_id, record))
    except KeyboardInterrupt:
        store.write_manifest({**manifest, "status": "interrupted", "ended_at": utc_now()})
        raise
    except BaseException as exc:
        store.write_manifest({**manifest, "status": "failed", "ended_at": utc_now(),
                              "error": one_line(f"{exc.__class__.__name__}: {exc}")})
        raise
    error = None
    if result.failed:
        first, reason = next(iter(result.failed.items()))
        error = (f"{len(result.failed)} of {len(plan.shards)} shards failed (first: {first}: {reason}); the others "
                 f"are written; rerun only the failed ones with --resume {plan.run_id}")
    store.write_manifest({**manifest, "status": "failed" if error else "complete", "ended_at": utc_now(),
                          "error": error})
    if error:
        raise ShardsFailedError(error)
    return result


def shard_line(shard_id: str, record: dict[str, Any]) -> str:
    """One line about an ended shard: rows, worker and attempts, or its error."""
    if record["status"] != "complete":
        return f"shard {shard_id}: failed: {record['error']}"
    worker = record["worker"]
    return (f"shard {shard_id}: {record['rows']} rows in {record['seconds']:.1f} s on {worker['host']} pid "
            f"{worker['pid']} (attempt {record['attempts']})")


def run_plan(plan: RunPlan, progress: bool = True, write_report_file: bool = True) -> RunResult:
    """Load the model, run each analysis not yet complete, write rows + manifest, then the report."""
    from mechbench.models.loading import load_model
    from mechbench.provenance import run_provenance

    config = plan.config
    model = load_model(config.model, device=config.device, dtype=config.dtype, allow_pickle=config.allow_pickle_weights)
    torch.manual_seed(config.seed)
    full_config = {**config.model_dump(), "analyses": {n: c.model_dump() for n, c in plan.analyses.items()}}
    store = plan.store
    store.start_run(plan.run_id, run_provenance(full_config, config.seed, model))
    result = RunResult(plan.run_id, store.root, [], 0)
    try:
        for name, options in plan.analyses.items():
            if SHARD in store.completed_shards(name, plan.run_id):
                continue
            frame = ANALYSES[name].run(model, options, progress)
            frame["run_id"] = plan.run_id
            store.write(frame, shard=SHARD)
            store.record_shard(plan.run_id, name, SHARD, len(frame))
            result.analyses.append(name)
            result.n_rows += len(frame)
    except KeyboardInterrupt:
        store.finish_run(plan.run_id, "interrupted")
        raise
    except BaseException as exc:
        store.finish_run(plan.run_id, "failed", error=f"{exc.__class__.__name__}: {exc}")
        raise
    store.finish_run(plan.run_id, "complete")
    result.summary = top_heads_lines(str(store.root), run_id=plan.run_id, top=5)
    if write_report_file:
        result.report_path = write_report(store, plan.run_id)
    return result


def ensure_run(store: ResultStore, analysis: str, config: str | Path, model: str | None = None,
               progress: bool = True) -> str:
    """Id of the latest run in ``store`` with ``analysis`` rows (of ``model``, when given); when there
    is none, run ``analysis`` with its options in ``config`` first (what a notebook does on an empty store)."""
    try:
        return latest_run(store, analysis, model=model, complete_only=True)
    except StoreError:
        pass
    plan = plan_run(Path(config), [analysis], model=model, store=str(store.root))
    return run_plan(plan, progress=progress, write_report_file=False).run_id
