"""The part of the result store a sweep writes and reads, at any fsspec URL.

Same layout as :class:`~mechbench.store.result_store.ResultStore` (so ``mechbench show``, ``report``
and ``ResultStore.read`` work on a local sweep store), plus one small file per shard attempt::

    <root>/data/analysis=<a>/run_id=<r>/<shard>.parquet     written by the worker that ran the shard
    <root>/runs/<run_id>.json                               run manifest, written by the driver only
    <root>/runs/<run_id>/attempts/<shard>/<stamp>-<hex>.json  one per attempt: which worker started it

A local path or ``file://`` URL is written with the store's temporary-file-then-rename writes; on an
object store (``s3://``, ``gs://``) and ``memory://`` one whole-object put is atomic by itself, so a
killed worker never leaves a partial partition anywhere. Only the driver writes the manifest, so no
lock is needed across machines.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mechbench.errors import StoreError, one_line
from mechbench.process import process_is_running
from mechbench.store.result_store import (
    _manifest_problem,
    _parquet_bytes,
    atomic_write_bytes,
    check_name,
    utc_now,
)
from mechbench.store.schema import CORE_COLUMNS, STORE_FORMAT_VERSION, conform


def is_store_url(store: str) -> bool:
    """Whether ``store`` is a URL (``file://``, ``s3://``, ...) rather than a plain directory path."""
    return "://" in store


class SweepStore:
    """A result store at an fsspec URL (``s3://bucket/results``, ``memory://x``, a directory)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the store {url!r} ({one_line(exc)}); install the fsspec backend of "
                             "its protocol (e.g. s3fs for s3://) or give a directory") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:  # absolute, so a worker whose working directory differs writes to the same place
            self.url = self.root

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _put(self, path: str, payload: bytes) -> None:
        """Write one file whole: temporary file + rename locally, one put on other file systems."""
        if self.local:
            atomic_write_bytes(Path(path), payload)
            return
        try:
            self.fs.pipe_file(path, payload)
        except OSError as exc:
            raise StoreError(f"could not write {self.url}: {path} ({one_line(exc)}); check the URL and your "
                             "credentials") from None

    def _get(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path} in {self.url} ({one_line(exc)})") from None

    def _glob(self, pattern: str) -> list[str]:
        return sorted(p for p in self.fs.glob(pattern) if not p.rsplit("/", 1)[-1].startswith("."))

    def ensure_format(self) -> None:
        """Write the format marker of a new store (what ``ResultStore`` checks when it reads one)."""
        marker = self._path("mechbench-store.json")
        if not self.fs.exists(marker):
            self._put(marker, json.dumps({"format_version": STORE_FORMAT_VERSION}).encode())

    # ------------------------------------------------------------------ partitions
    def write_shard(self, frame: pd.DataFrame, analysis: str, run_id: str, shard: str) -> int:
        """Write one shard's rows as ``<shard>.parquet`` of its partition (replacing it whole); return the rows."""
        rows = conform(frame)
        if rows.empty:
            raise StoreError(f"shard {shard} produced no rows; refusing to write an empty result frame")
        path = self._path("data", f"analysis={check_name('analysis', analysis)}",
                          f"run_id={check_name('run id', run_id)}", f"{check_name('shard', shard)}.parquet")
        self._put(path, _parquet_bytes(rows))
        return len(rows)

    def completed_shards(self, run_id: str) -> set[str]:
        """Ids of the shards of a run already written in full (every analysis)."""
        files = self._glob(self._path("data", "analysis=*", f"run_id={check_name('run id', run_id)}", "*.parquet"))
        return {f.rsplit("/", 1)[-1].removesuffix(".parquet") for f in files}

    def read(self, run_id: str) -> pd.DataFrame:
        """Every row of a run as one frame in the tidy schema (empty with the core columns if none)."""
        files = self._glob(self._path("data", "analysis=*", f"run_id={check_name('run id', run_id)}", "*.parquet"))
        frames = []
        for path in files:
            with self.fs.open(path, "rb") as handle:
                frames.append(conform(pq.read_table(handle).to_pandas()))
        if not frames:
            return conform(pd.DataFrame({c: pd.Series(dtype=t) for c, t in CORE_COLUMNS.items()}))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------ attempts
    def record_attempt(self, run_id: str, shard: str, worker: dict[str, Any]) -> int:
        """Note that ``worker`` starts a shard; return how many attempts (this one included) it has had."""
        folder = self._path("runs", check_name("run id", run_id), "attempts", check_name("shard", shard))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self._put(f"{folder}/{stamp}-{os.urandom(4).hex()}.json",
                  json.dumps({"worker": worker, "started_at": utc_now()}).encode())
        return len(self._glob(f"{folder}/*.json"))

    # ------------------------------------------------------------------ manifests
    def manifest_exists(self, run_id: str) -> bool:
        return bool(self.fs.exists(self._path("runs", f"{check_name('run id', run_id)}.json")))

    def manifest(self, run_id: str) -> dict[str, Any]:
        """The run manifest; a ``running`` run whose driver process has ended reads as ``interrupted``."""
        path = self._path("runs", f"{check_name('run id', run_id)}.json")
        if not self.fs.exists(path):
            raise StoreError(f"no run {run_id!r} in {self.url}; check --resume and --store")
        try:
            manifest = json.loads(self._get(path))
            problem = _manifest_problem(manifest, run_id)
        except ValueError:
            problem = "not valid JSON"
        if problem:
            raise StoreError(f"corrupt run manifest {path} ({problem}); restore it, or start a new run")
        if manifest.get("status") == "running" and process_is_running(manifest.get("process") or {}) is False:
            manifest["status"] = "interrupted"
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        self._put(self._path("runs", f"{check_name('run id', manifest['run_id'])}.json"), payload)
