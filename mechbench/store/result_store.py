"""ResultStore: a Parquet dataset of tidy rows plus one provenance manifest per run.

Layout on disk::

    <root>/mechbench-store.json                       format version
    <root>/runs/<run_id>.json                         run manifest (config, seed, model, versions, status, shards)
    <root>/data/analysis=<a>/run_id=<r>/<shard>.parquet

Every file is written to a temporary name in the same directory, flushed, then renamed, so a
reader never sees a partial file and an interrupted write leaves no partial partition. Manifest
updates are serialised with an advisory file lock, so concurrent runs into one store lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mechbench.errors import StoreError
from mechbench.process import process_fingerprint, process_is_running
from mechbench.store.schema import CORE_COLUMNS, STORE_FORMAT_VERSION, conform

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_STATUSES = ("running", "complete", "interrupted", "failed")


def check_name(kind: str, name: str) -> str:
    """Validate a run id, analysis or shard name used as a path component."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise StoreError(f"{kind} {name!r} is not a valid name: use letters, digits, '.', '_' or '-' "
                         "(at most 128 characters, not starting with punctuation)")
    return name


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC timestamp plus 6 random hex digits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.urandom(3).hex()}"


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same directory and an atomic rename.

    The file gets the permissions an ordinary ``open(path, "w")`` would (0666 minus the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ResultStore:
    """A directory of tidy results. ``ResultStore(path).read(analysis="sinks")`` returns one frame."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ layout
    @property
    def _data_dir(self) -> Path:
        return self.root / "data"

    @property
    def _runs_dir(self) -> Path:
        return self.root / "runs"

    def _partition(self, analysis: str, run_id: str) -> Path:
        analysis_dir = f"analysis={check_name('analysis', analysis)}"
        return self._data_dir / analysis_dir / f"run_id={check_name('run id', run_id)}"

    def _ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / "mechbench-store.json"
            if not marker.exists():
                atomic_write_bytes(marker, json.dumps({"format_version": STORE_FORMAT_VERSION}).encode())
        except PermissionError:
            raise StoreError(f"cannot write to the result store {self.root}: permission denied; "
                             "pass --store with a writable directory") from None
        except OSError as exc:
            raise StoreError(f"cannot write to the result store {self.root}: {exc.strerror or exc}; "
                             "free space or pass --store with another directory") from None
        self._check_format()

    def _check_format(self) -> None:
        marker = self.root / "mechbench-store.json"
        if not marker.exists():
            return
        try:
            version = json.loads(marker.read_text())["format_version"]
            if not isinstance(version, int):
                raise TypeError(version)
        except (OSError, ValueError, KeyError, TypeError):
            raise StoreError(f"{marker} is corrupt; it should hold {{\"format_version\": "
                             f"{STORE_FORMAT_VERSION}}}") from None
        if version > STORE_FORMAT_VERSION:
            raise StoreError(f"the store {self.root} has format version {version}, newer than this mechbench "
                             f"understands ({STORE_FORMAT_VERSION}); upgrade mechbench to read it")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_writable()
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writing
    def write(self, frame: pd.DataFrame, shard: str = "part-0") -> list[Path]:
        """Write tidy rows atomically, one file per (analysis, run_id) group, named ``<shard>.parquet``.

        Writing the same shard again replaces it whole (what resuming a run relies on).
        """
        check_name("shard", shard)
        rows = conform(frame)
        if rows.empty:
            raise StoreError("refusing to write an empty result frame: the analysis produced no rows")
        self._ensure_writable()
        written = []
        for (analysis, run_id), group in rows.groupby(["analysis", "run_id"], sort=True):
            path = self._partition(str(analysis), str(run_id)) / f"{shard}.parquet"
            table = pa.Table.from_pandas(group.reset_index(drop=True), preserve_index=False)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            try:
                atomic_write_bytes(path, sink.getvalue().to_pybytes())
            except OSError as exc:
                raise StoreError(f"could not write {path}: {exc.strerror or exc}; nothing was written for "
                                 "this shard (free space or choose another --store)") from None
            written.append(path)
        return written

    def completed_shards(self, analysis: str, run_id: str) -> set[str]:
        """Names of the shards of (analysis, run_id) already written in full."""
        part = self._partition(analysis, run_id)
        if not part.is_dir():
            return set()
        return {p.stem for p in part.glob("*.parquet") if not p.name.startswith(".")}

    # ------------------------------------------------------------------ reading
    def _files(self, analysis: str | None, run_id: str | None) -> list[Path]:
        if not self._data_dir.is_dir():
            return []
        a = f"analysis={check_name('analysis', analysis)}" if analysis else "analysis=*"
        r = f"run_id={check_name('run id', run_id)}" if run_id else "run_id=*"
        return sorted(p for p in self._data_dir.glob(f"{a}/{r}/*.parquet") if not p.name.startswith("."))

    def read(self, analysis: str | None = None, model: str | None = None, run_id: str | None = None,
             metric: str | None = None, **filters: Any) -> pd.DataFrame:
        """All rows matching the filters, as one frame in the tidy schema.

        ``filters`` compares any other column for equality, e.g. ``read(analysis="sinks", layer=3)``.
        A store with no matching rows gives an empty frame with the core columns.
        """
        if not self.root.exists():
            raise StoreError(f"no result store at {self.root}; run `mechbench analyze` first or pass --store")
        self._check_format()
        frames = [self._read_file(path) for path in self._files(analysis, run_id)]
        if not frames:
            return conform(pd.DataFrame({c: pd.Series(dtype=t) for c, t in CORE_COLUMNS.items()}))
        out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        conditions: dict[str, Any] = {"model": model, "metric": metric, **filters}
        for column, wanted in conditions.items():
            if wanted is None:
                continue
            if column not in out.columns:
                raise StoreError(f"cannot filter on {column!r}: the stored rows have no such column "
                                 f"(columns: {', '.join(out.columns)})")
            out = out[out[column] == wanted]
        return out.reset_index(drop=True)

    @staticmethod
    def _read_file(path: Path) -> pd.DataFrame:
        try:
            frame = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"corrupt result file {path} ({exc.__class__.__name__}); delete it and rerun "
                             "that run with `mechbench analyze --resume RUN`") from None
        return conform(frame)

    # ------------------------------------------------------------------ manifests
    def _manifest_path(self, run_id: str) -> Path:
        return self._runs_dir / f"{check_name('run id', run_id)}.json"

    def manifest(self, run_id: str) -> dict[str, Any]:
        """The manifest of one run; StoreError if there is none or it is corrupt.

        A run whose manifest still says ``running`` although its process has ended (killed with
        SIGKILL, machine crash) is reported as ``interrupted``: nothing was left to mark it so.
        """
        manifest = self._read_manifest(run_id)
        if manifest.get("status") == "running" and process_is_running(manifest.get("process") or {}) is False:
            manifest["status"] = "interrupted"
        return manifest

    def _read_manifest(self, run_id: str) -> dict[str, Any]:
        path = self._manifest_path(run_id)
        if not path.exists():
            known = ", ".join(m["run_id"] for m in self.manifests()) or "none"
            raise StoreError(f"no run {run_id!r} in {self.root} (runs: {known})")
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            raise StoreError(f"corrupt run manifest {path}; delete it and the run's data partitions "
                             f"(data/analysis=*/run_id={run_id}) and rerun") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"corrupt run manifest {path}: not a JSON object; delete it and rerun the run")
        version = manifest.get("format_version", STORE_FORMAT_VERSION)
        if not isinstance(version, int) or version > STORE_FORMAT_VERSION:
            raise StoreError(f"run manifest {path} has format version {version}, newer than this mechbench "
                             f"understands ({STORE_FORMAT_VERSION}); upgrade mechbench to read it")
        return manifest

    def manifests(self) -> list[dict[str, Any]]:
        """All run manifests, oldest first."""
        if not self._runs_dir.is_dir():
            return []
        out = [self.manifest(p.stem) for p in self._runs_dir.glob("*.json") if not p.name.startswith(".")]
        return sorted(out, key=lambda m: (m.get("started_at", ""), m["run_id"]))

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        atomic_write_bytes(self._manifest_path(manifest["run_id"]), payload)

    def start_run(self, run_id: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
        """Create (or reopen, for --resume) the manifest of a run and mark it running."""
        with self._locked():
            path = self._manifest_path(run_id)
            manifest = json.loads(path.read_text()) if path.exists() else {
                "format_version": STORE_FORMAT_VERSION, "run_id": run_id, "started_at": _utcnow(), "shards": {}}
            manifest.update(provenance)
            manifest.update(status="running", ended_at=None, process=process_fingerprint())
            manifest.setdefault("resumed_at", [])
            if path.exists():
                manifest["resumed_at"].append(_utcnow())
            self._write_manifest(manifest)
            return manifest

    def record_shard(self, run_id: str, analysis: str, shard: str, n_rows: int) -> None:
        """Note in the manifest that a shard of an analysis was written in full."""
        with self._locked():
            manifest = self._read_manifest(run_id)
            manifest["shards"].setdefault(analysis, {})[shard] = {"rows": n_rows, "written_at": _utcnow()}
            self._write_manifest(manifest)

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Mark a run complete, interrupted or failed, with its end time."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; one of {RUN_STATUSES}")
        with self._locked():
            manifest = self._read_manifest(run_id)
            manifest.update(status=status, ended_at=_utcnow(), error=error)
            self._write_manifest(manifest)
