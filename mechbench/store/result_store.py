"""ResultStore: a Parquet dataset of tidy rows plus one provenance manifest per run.

Layout on disk::

    <root>/mechbench-store.json                       format version
    <root>/runs/<run_id>.json                         run manifest (config, seed, model, versions, status, shards)
    <root>/data/analysis=<a>/run_id=<r>/<shard>.parquet

Every file is written to a temporary name in the same directory, flushed, then renamed, so a
reader never sees a partial file and an interrupted or failed write (full disk, no permission)
leaves no partial partition. Manifest updates are serialised with an advisory file lock, so
concurrent runs into one store lose nothing. Every failure is a one-line StoreError.
"""

from __future__ import annotations

import contextlib
import errno
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

from mechbench.errors import StoreError, has_control_characters, one_line
from mechbench.process import process_fingerprint, process_is_running
from mechbench.store.schema import CORE_COLUMNS, STORE_FORMAT_VERSION, conform

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_STATUSES = ("running", "complete", "interrupted", "failed")

#: Why an operating-system call failed and what to do about it, by errno (else the system's wording).
_OS_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space on it or choose another directory"),
    errno.EDQUOT: ("disk quota exceeded", "free space on it or choose another directory"),
    errno.EACCES: ("permission denied", "get write permission there or choose another directory"),
    errno.EPERM: ("operation not permitted", "get write permission there or choose another directory"),
    errno.EROFS: ("read-only file system", "choose a directory on a writable file system"),
    errno.EEXIST: ("a file is in the way of a directory", "move the file or choose another directory"),
    errno.ENOTDIR: ("a file is in the way of a directory", "move the file or choose another directory"),
}

#: JSON types of the manifest fields mechbench reads (``run_id`` and ``shards`` are required).
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "shards": (dict,), "format_version": (int,), "status": (str,), "started_at": (str,),
    "ended_at": (str, type(None)), "resumed_at": (list,), "process": (dict, type(None)), "config": (dict,),
    "error": (str, type(None)),
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def check_name(kind: str, name: str) -> str:
    """Validate a run id, analysis or shard name used as a path component."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise StoreError(f"{kind} {name!r} is not a valid name: use letters, digits, '.', '_' or '-' "
                         "(at most 128 characters, not starting with punctuation)")
    return name


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC timestamp plus 6 random hex digits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.urandom(3).hex()}"


def utc_now() -> str:
    """The time stamp of every manifest entry: UTC, to the second, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _os_problem(exc: OSError) -> tuple[str, str]:
    """(reason, fix) for an OSError met while writing, e.g. ("no space left on the device", "free space ...")."""
    return _OS_PROBLEMS.get(exc.errno or 0, (one_line(exc.strerror or exc), "choose another directory"))


def _write_temporary(path: Path, payload: bytes) -> str:
    """Write ``payload`` to a new temporary file beside ``path``, flushed to disk; return its name.

    The file gets the permissions an ordinary ``open(path, "w")`` would (0666 minus the umask).
    It is removed again if writing fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_files(payloads: Mapping[Path, bytes]) -> None:
    """Write files (nearly) all or nothing: every payload goes to a temporary file beside its target
    first, and only when all are on disk are they renamed over their targets (``os.replace``).

    On any failure the temporary files are removed and the targets keep their previous content
    (or stay absent); an OSError becomes a one-line StoreError naming the file, the reason and the fix.
    """
    staged: dict[Path, str] = {}  # target -> its temporary file, until renamed
    target: Path | None = None
    try:
        for target, payload in payloads.items():
            staged[target] = _write_temporary(target, payload)
        for target in payloads:
            os.replace(staged[target], target)
            del staged[target]
    except OSError as exc:
        reason, fix = _os_problem(exc)
        raise StoreError(f"could not write {target} ({reason}); it was left unchanged, with no partial file; "
                         f"{fix}") from None
    finally:
        for tmp in staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write one file atomically (see :func:`atomic_write_files`)."""
    atomic_write_files({path: payload})


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _manifest_problem(manifest: Any, run_id: str) -> str | None:
    """What makes a parsed run manifest unusable (``"no 'shards' field"``, ...), or None if nothing."""
    if not isinstance(manifest, dict):
        return f"not a JSON object but {_json_name(manifest)}"
    for key in ("run_id", "shards"):
        if key not in manifest:
            return f"no {key!r} field"
    for key, types in _MANIFEST_TYPES.items():
        if key in manifest and type(manifest[key]) not in types:
            expected = " or ".join(_JSON_NAMES[t] for t in types)
            return f"{key!r} should be {expected}, not {_json_name(manifest[key])}"
    if manifest["run_id"] != run_id:
        return f"it names run {manifest['run_id']!r}, not {run_id!r}"
    for analysis, shards in manifest["shards"].items():
        if not isinstance(shards, dict):
            return f"the shards of {analysis!r} should be an object, not {_json_name(shards)}"
    if manifest.get("status", "running") not in RUN_STATUSES:
        return f"unknown status {manifest['status']!r}"
    return None


class ResultStore:
    """A directory of tidy results. ``ResultStore(path).read(analysis="sinks")`` returns one frame."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        if has_control_characters(root):
            raise StoreError(f"the store path {str(root)!r} holds a control character (NUL, newline, ...); pass "
                             "--store with a plain directory path")
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
        except OSError as exc:
            reason, fix = _os_problem(exc)
            raise StoreError(f"could not create the result store {self.root} ({reason}); {fix}") from None
        marker = self.root / "mechbench-store.json"
        if not marker.exists():
            atomic_write_bytes(marker, json.dumps({"format_version": STORE_FORMAT_VERSION}).encode())
        self._check_format()

    def _check_format(self) -> None:
        marker = self.root / "mechbench-store.json"
        if not marker.exists():
            return
        try:
            version = json.loads(_read_text(marker))["format_version"]
            if type(version) is not int:
                raise TypeError(version)
        except (ValueError, KeyError, TypeError, RecursionError):
            raise StoreError(f"{marker} is corrupt; it should hold {{\"format_version\": "
                             f"{STORE_FORMAT_VERSION}}}") from None
        if version > STORE_FORMAT_VERSION:
            raise StoreError(f"the store {self.root} has format version {version}, newer than this mechbench "
                             f"understands ({STORE_FORMAT_VERSION}); upgrade mechbench to read it")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (``<root>/.lock``); closing the file releases it."""
        self._ensure_writable()
        lock = self.root / ".lock"
        with contextlib.ExitStack() as stack:
            try:
                handle = stack.enter_context(open(lock, "a+"))
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError as exc:
                reason, fix = _os_problem(exc)
                raise StoreError(f"could not lock the result store with {lock} ({reason}); {fix}") from None
            yield

    # ------------------------------------------------------------------ writing
    def write(self, frame: pd.DataFrame, shard: str = "part-0") -> list[Path]:
        """Write tidy rows atomically, one file per (analysis, run_id) group, named ``<shard>.parquet``.

        Writing the same shard again replaces it whole (what resuming a run relies on).
        """
        check_name("shard", shard)
        rows = conform(frame)
        if rows.empty:
            raise StoreError("refusing to write an empty result frame: the analysis produced no rows")
        payloads = {self._partition(str(analysis), str(run_id)) / f"{shard}.parquet": _parquet_bytes(group)
                    for (analysis, run_id), group in rows.groupby(["analysis", "run_id"], sort=True)}
        self._ensure_writable()
        atomic_write_files(payloads)
        return list(payloads)

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
        names = stored_names(check_name("analysis", analysis)) if analysis else ["*"]
        r = f"run_id={check_name('run id', run_id)}" if run_id else "run_id=*"
        return sorted(p for name in names for p in self._data_dir.glob(f"analysis={name}/{r}/*.parquet")
                      if not p.name.startswith("."))

    def read(self, analysis: str | None = None, model: str | None = None, run_id: str | None = None,
             metric: str | None = None, **filters: Any) -> pd.DataFrame:
        """All rows matching the filters, as one frame in the tidy schema.

        ``filters`` compares any other column for equality, e.g. ``read(analysis="sinks", layer=3)``.
        ``analysis`` also finds the rows stored under the analysis's other names (:func:`stored_names`:
        ``waad_fai`` reads runs made as ``distance`` and the other way round); rows keep the name they
        were stored with.
        A store with no matching rows gives an empty frame with the core columns.
        """
        if not self.root.is_dir():
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
            if not pd.api.types.is_scalar(wanted):
                raise StoreError(f"cannot filter on {column}={wanted!r}: a filter compares with one value; "
                                 "filter the returned frame for more")
            out = out[out[column] == wanted]
        return out.reset_index(drop=True)

    @staticmethod
    def _read_file(path: Path) -> pd.DataFrame:
        try:
            return conform(pq.read_table(path).to_pandas())
        except (OSError, pa.ArrowException, StoreError) as exc:
            reason = f"not in the tidy schema: {exc}" if isinstance(exc, StoreError) else exc.__class__.__name__
            run_id = path.parent.name.removeprefix("run_id=")
            raise StoreError(f"corrupt result file {path} ({reason}); delete it and rerun that run with "
                             f"`mechbench analyze --resume {run_id}`") from None

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

    def _run_ids(self) -> list[str]:
        """Ids of the runs with a manifest file (temporary and foreign files skipped), sorted."""
        if not self._runs_dir.is_dir():
            return []
        return sorted(p.stem for p in self._runs_dir.glob("*.json") if _SAFE_NAME.fullmatch(p.stem))

    def _read_manifest(self, run_id: str) -> dict[str, Any]:
        """The manifest as stored; StoreError if it is missing, unreadable, damaged or from a newer mechbench."""
        path = self._manifest_path(run_id)
        if not path.exists():
            raise StoreError(f"no run {run_id!r} in {self.root} (runs: {', '.join(self._run_ids()) or 'none'})")
        try:
            manifest = json.loads(_read_text(path))
            problem = _manifest_problem(manifest, run_id)
        except ValueError:
            problem = "not valid JSON"
        except RecursionError:
            problem = "nested too deeply"
        if problem:
            raise StoreError(f"corrupt run manifest {path} ({problem}); restore it, or delete it and the run's "
                             f"data partitions (data/analysis=*/run_id={run_id}) and rerun")
        version = manifest.get("format_version", STORE_FORMAT_VERSION)
        if version > STORE_FORMAT_VERSION:
            raise StoreError(f"run manifest {path} has format version {version}, newer than this mechbench "
                             f"understands ({STORE_FORMAT_VERSION}); upgrade mechbench to read it")
        return manifest

    def manifests(self) -> list[dict[str, Any]]:
        """All run manifests, oldest first."""
        out = [self.manifest(run_id) for run_id in self._run_ids()]
        return sorted(out, key=lambda m: (m.get("started_at", ""), m["run_id"]))

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        payload = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        atomic_write_bytes(self._manifest_path(manifest["run_id"]), payload)

    def start_run(self, run_id: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
        """Create (or reopen, for --resume) the manifest of a run and mark it running."""
        with self._locked():
            if self._manifest_path(run_id).exists():
                manifest = self._read_manifest(run_id)
                manifest["resumed_at"] = [*manifest.get("resumed_at", []), utc_now()]
            else:
                manifest = {"format_version": STORE_FORMAT_VERSION, "run_id": run_id, "started_at": utc_now(),
                            "shards": {}, "resumed_at": []}
            manifest.update(provenance)
            manifest.update(status="running", ended_at=None, process=process_fingerprint())
            self._write_manifest(manifest)
            return manifest

    def record_shard(self, run_id: str, analysis: str, shard: str, n_rows: int) -> None:
        """Note in the manifest that a shard of an analysis was written in full."""
        with self._locked():
            manifest = self._read_manifest(run_id)
            manifest["shards"].setdefault(analysis, {})[shard] = {"rows": n_rows, "written_at": utc_now()}
            self._write_manifest(manifest)

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Mark a run complete, interrupted or failed, with its end time."""
        if status not in RUN_STATUSES:
            raise StoreError(f"unknown run status {status!r}; one of {RUN_STATUSES}")
        with self._locked():
            manifest = self._read_manifest(run_id)
            manifest.update(status=status, ended_at=utc_now(), error=error)
            self._write_manifest(manifest)


def stored_names(analysis: str) -> list[str]:
    """Every name an analysis's rows may be stored under: its own and its aliases (the names of runs made
    before it was renamed, e.g. ``distance`` for ``waad_fai``), whichever of them ``analysis`` is."""
    from mechbench.analyses import ANALYSES  # here: discovering the analyses imports them

    if analysis not in ANALYSES:
        return [analysis]
    spec = ANALYSES[analysis]
    return [spec.name, *spec.aliases]


def _read_text(path: Path) -> str:
    """A store file's text; a one-line StoreError if it cannot be read (permissions, a directory, I/O)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot read {path} ({one_line(exc.strerror or exc)}); make it a file you can read") from None


def _parquet_bytes(rows: pd.DataFrame) -> bytes:
    """One Parquet file of conformed rows; a one-line StoreError if a column's values have no Parquet type."""
    try:
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        reason = one_line(exc.args[-1] if exc.args else exc)  # pyarrow's last argument names the column
        raise StoreError(f"result rows cannot be stored in Parquet ({reason}); give every extra column numbers, "
                         "strings or booleans") from None
    return sink.getvalue().to_pybytes()
