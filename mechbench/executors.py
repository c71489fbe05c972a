"""Executors of sweep shards: ``local`` (in this process) and ``ray`` (tasks on a Ray cluster).

Both call :func:`run_shard`, the one code path that runs a shard and writes its partition, so the
table is the same whichever executor ran it. A process keeps the model it used last
(:func:`cached_model`), so a Ray worker loads a model once and reuses it for the shards of that
model it is given next. Ray is imported only by :class:`RayExecutor`; the local executor works
without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mechbench.analyses import ANALYSES
from mechbench.config import RunConfig, StrictModel
from mechbench.core.model import ModelInterface
from mechbench.errors import ConfigError, one_line
from mechbench.models.cache import cache_dir
from mechbench.process import process_fingerprint
from mechbench.store.result_store import atomic_write_bytes, utc_now
from mechbench.store.sweep_store import SweepStore
from mechbench.sweep import Shard, shard_resources, shard_slice
from mechbench.tasks.texts import load_texts

RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install 'mechbench[ray]'"


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs besides the shard: where to write and how to load models."""

    run_id: str
    store_url: str
    seed: int
    device: str
    dtype: str
    allow_pickle_weights: bool


#: Outcome of a shard: its manifest record, or the exception that ended it.
Outcome = dict[str, Any] | BaseException

_MODELS: dict[tuple[str, str, str, bool], ModelInterface] = {}


def cached_model(name: str, job: ShardJob) -> tuple[ModelInterface, bool]:
    """This process's copy of a model, and whether this call loaded it. A process keeps only the model it
    used last (the memory hints count one model per worker); shards are handed out grouped by model, so
    a worker loads each model about once."""
    from mechbench.models.loading import load_model

    key = (name, job.device, job.dtype, job.allow_pickle_weights)
    if key in _MODELS:
        return _MODELS[key], False
    _MODELS.clear()  # free the previous model before loading the next
    _MODELS[key] = load_model(name, device=job.device, dtype=job.dtype, allow_pickle=job.allow_pickle_weights)
    return _MODELS[key], True


def worker_identity() -> dict[str, Any]:
    """Host, pid and process start time of this process, plus its Ray node and worker ids inside Ray."""
    identity = process_fingerprint()
    ray = _ray_if_running()
    if ray is not None:
        context = ray.get_runtime_context()
        identity.update(ray_node_id=context.get_node_id(), ray_worker_id=context.get_worker_id())
    return identity


def _ray_if_running() -> Any:
    """The ray module when this process is connected to a Ray cluster (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def shard_options(shard: Shard) -> StrictModel:
    """The analysis options of a shard; a task shard's slice of texts is written to a cached JSONL file."""
    options = dict(shard.options)
    if shard.count > 1:
        ids, texts = load_texts(options["texts"], options.get("limit"))
        part = shard_slice(len(ids), shard.index, shard.count)
        lines = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids[part], texts[part], strict=True))
        path = cache_dir() / "shard-texts" / f"{hashlib.sha256(lines.encode()).hexdigest()[:20]}.jsonl"
        if not path.exists():
            atomic_write_bytes(path, lines.encode())
        options.update(texts=str(path), limit=part.stop - part.start)
    return ANALYSES[shard.analysis].config_model.model_validate(options)


def run_shard(shard: Shard, job: ShardJob) -> dict[str, Any]:
    """Run one shard and write its partition atomically; return its manifest record."""
    import torch

    store = SweepStore(job.store_url)
    worker = worker_identity()
    attempts = store.record_attempt(job.run_id, shard.shard_id, worker)
    started = time.monotonic()
    model, loaded = cached_model(shard.model, job)
    torch.manual_seed(job.seed)  # every shard starts from the seed: its rows do not depend on the order
    frame = ANALYSES[shard.analysis].run(model, shard_options(shard), False)
    frame["run_id"] = job.run_id
    frame["shard"] = shard.shard_id
    rows = store.write_shard(frame, shard.analysis, job.run_id, shard.shard_id)
    return {"status": "complete", "rows": rows, "worker": worker, "attempts": attempts, "model_loaded": loaded,
            "seconds": round(time.monotonic() - started, 3), "written_at": utc_now()}


class Executor(Protocol):
    """Runs shards and yields each with its outcome as it ends (in any order)."""

    name: str

    def run(self, shards: Sequence[Shard], job: ShardJob, config: RunConfig) -> Iterator[tuple[Shard, Outcome]]:
        ...


class LocalExecutor:
    """Runs shards one after another in this process (no Ray needed)."""

    name = "local"

    def run(self, shards: Sequence[Shard], job: ShardJob, config: RunConfig) -> Iterator[tuple[Shard, Outcome]]:
        for shard in sorted(shards, key=lambda s: s.model):
            try:
                outcome: Outcome = run_shard(shard, job)
            except Exception as exc:  # one failed shard must not stop the others; the run reports it
                outcome = exc
            yield shard, outcome


class RayExecutor:
    """Runs each shard as a Ray task with the shard's resource hints, retried when its worker dies.

    Connects to the cluster at ``address`` (``auto``, ``ray://host:10001``, ``host:6379``), to the Ray
    this process is already connected to, or else starts a local Ray on every core of this machine,
    shut down again at the end.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        self.ray = ray
        self.address = address

    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        ray = self.ray
        if ray.is_initialized():
            yield
            return
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level="warning")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot connect to Ray at {self.address or 'a new local cluster'} ({one_line(exc)}); "
                              "check --address (see docs/sweeps.md)") from None
        try:
            yield
        finally:
            ray.shutdown()

    def run(self, shards: Sequence[Shard], job: ShardJob, config: RunConfig) -> Iterator[tuple[Shard, Outcome]]:
        ray = self.ray
        retries = config.sweep.max_retries if config.sweep else 3
        with self._connected():
            task = ray.remote(run_shard)
            pending = {task.options(name=shard.shard_id, max_retries=retries,
                                    **shard_resources(shard, config).ray_options()).remote(shard, job): shard
                       for shard in sorted(shards, key=lambda s: s.model)}
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(ready)
                try:
                    outcome: Outcome = ray.get(ready)
                except ray.exceptions.RayTaskError as exc:  # the shard raised: report its own exception
                    outcome = exc.cause if isinstance(exc.cause, BaseException) else exc
                except ray.exceptions.RayError as exc:  # its worker died more than max_retries times
                    outcome = exc
                yield shard, outcome


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); ``address`` only with Ray."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address is the Ray cluster to run on; use it with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ConfigError(f"unknown executor {name!r}; choose local or ray")

