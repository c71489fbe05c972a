"""Bad input against the store and the config loader: property tests (hypothesis), a full disk, no
write permission, damaged files, newer formats and two processes writing one store at once.

Every error must be one line that names the problem and the fix, and a failed write must leave the
store exactly as it was. The store tests need no torch; the config tests that validate analysis
blocks import the analyses (and so torch) on their first call.
"""

from __future__ import annotations

import builtins
import errno
import json
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechbench.config import RunConfig, load_config, parse_config, with_overrides
from mechbench.errors import ConfigError, MechbenchError, StoreError
from mechbench.store import CORE_COLUMNS, ResultStore, conform

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_one_line(error: pytest.ExceptionInfo[MechbenchError] | MechbenchError, *words: str) -> None:
    """The message is one line and holds each of ``words`` (the problem and the fix)."""
    message = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory (None) under ``root``, dotfiles included."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def rows(run_id: str = "run-a", analysis: str = "sinks", n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"run_id": run_id, "analysis": analysis, "metric": "m", "model": "toy",
                         "layer": np.arange(n) % 3, "head": np.arange(n), "value": np.linspace(0, 1, n)})


def fail_with(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, code: int, after: int = 0) -> None:
    """Make ``target.name`` raise the OSError of ``code``, as the operating system would, once it has
    succeeded ``after`` times."""
    real, calls = getattr(target, name), []

    def fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, fail)


# ---------------------------------------------------------------------------- store: round trip
NAMES = st.sampled_from(["a", "b.1", "sinks"])
NULLABLE_INTS = st.none() | st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
EXTRA_KINDS = {
    "text": (st.none() | st.text(max_size=8), lambda values: values),
    "float": (FLOATS, lambda values: np.array(values, dtype="float64")),
    "int": (NULLABLE_INTS, lambda values: pd.array(values, dtype="Int64")),
    "bool": (st.booleans(), lambda values: np.array(values, dtype=bool)),
}


@st.composite
def tidy_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Tidy rows with random core values (nulls, extreme ints, nan/inf, any unicode), some nullable core
    columns left out, and extra columns of random names and types."""
    n = draw(st.integers(1, 12))

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(values, min_size=n, max_size=n))

    frame = pd.DataFrame({
        "run_id": column(NAMES), "analysis": column(NAMES), "metric": column(st.text(max_size=8)),
        "model": column(st.text(max_size=8)), "layer": pd.array(column(NULLABLE_INTS), dtype="Int64"),
        "head": pd.array(column(NULLABLE_INTS), dtype="Int64"), "example": column(st.none() | st.text(max_size=8)),
        "position": pd.array(column(NULLABLE_INTS), dtype="Int64"), "value": np.array(column(FLOATS)),
    })
    frame = frame.drop(columns=draw(st.lists(st.sampled_from(["layer", "head", "example", "position", "value"]),
                                             unique=True)))
    extra_names = draw(st.lists(st.text(min_size=1, max_size=6).filter(lambda c: c not in CORE_COLUMNS),
                                max_size=3, unique=True))
    for name in extra_names:
        values, build = EXTRA_KINDS[draw(st.sampled_from(sorted(EXTRA_KINDS)))]
        frame[name] = build(column(values))
    return frame


@PROPERTY
@given(frame=tidy_frames())
def test_round_trip_of_random_frames_is_exact(frame):
    expected = conform(frame)
    expected = pd.concat([group for _, group in expected.groupby(["analysis", "run_id"], sort=True)],
                         ignore_index=True)
    with tempfile.TemporaryDirectory() as root:
        store = ResultStore(root)
        store.write(frame)
        pd.testing.assert_frame_equal(store.read(), expected, check_exact=True)


# ---------------------------------------------------------------------------- store: bad frames
@pytest.mark.parametrize(("frame", "words"), [
    ([1, 2], ["expected a pandas DataFrame", "got list"]),
    (rows().rename(columns={"head": 7}), ["non-string column name(s) [7]", "name every column with a string"]),
    (pd.concat([rows(), rows()[["value"]]], axis=1), ["duplicate column(s) ['value']", "its own name"]),
    (rows().assign(layer="first"), ["column 'layer' cannot be stored as Int64 (Failed to parse string: 'first'",
                                    "give it Int64 values"]),
    (rows().assign(layer=2.5), ["column 'layer' cannot be stored as Int64", "give it Int64 values"]),
    (rows().assign(value=[[1.0]] * 6), ["column 'value' cannot be stored as float64", "give it float64 values"]),
    (rows().assign(weight=[1 + 2j] * 6), ["cannot be stored in Parquet (Conversion failed for column weight with "
                                          "type complex128)", "give every extra column numbers, strings or booleans"]),
])
def test_bad_frames_give_one_line_and_write_nothing(tmp_path, frame, words):
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / "store").write(frame)
    assert_one_line(info, *words)
    assert not (tmp_path / "store").exists()


def test_a_name_with_a_trailing_newline_is_refused(tmp_path):
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path).write(rows(run_id="run-a\n"))
    assert_one_line(info, "run id 'run-a\\n' is not a valid name", "use letters, digits")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- store: full disk, no permission
@pytest.mark.parametrize(("name", "code", "words"), [
    ("write", errno.ENOSPC, ["(no space left on the device)", "free space on it or choose another directory"]),
    ("fsync", errno.EDQUOT, ["(disk quota exceeded)", "free space on it"]),
    ("replace", errno.EIO, ["(Input/output error)", "choose another directory"]),
])
def test_a_full_disk_while_writing_a_shard_leaves_the_store_as_it_was(tmp_path, monkeypatch, name, code, words):
    store = ResultStore(tmp_path)
    store.write(rows(n=4), shard="part-0")
    store.start_run("run-a", {"model": "toy"})
    before = snapshot(tmp_path)
    with monkeypatch.context() as patch:
        fail_with(patch, os, name, code)
        with pytest.raises(StoreError) as info:
            store.write(rows(n=9), shard="part-0")  # replaces the shard
        with pytest.raises(StoreError):
            store.write(rows(n=9), shard="part-1")  # a new shard
    assert_one_line(info, "could not write", "part-0.parquet", "it was left unchanged, with no partial file", *words)
    assert snapshot(tmp_path) == before  # no partial partition, no temporary file, old shard intact
    assert len(store.read()) == 4


def test_a_frame_of_two_runs_is_published_only_when_both_files_are_written(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write(rows())
    before = snapshot(tmp_path)
    fail_with(monkeypatch, os, "fsync", errno.ENOSPC, after=1)  # the first file is written, the second is not
    with pytest.raises(StoreError) as info:
        store.write(pd.concat([rows("run-b"), rows("run-c")]))
    assert_one_line(info, "run_id=run-c", "(no space left on the device)")
    assert {k for k in snapshot(tmp_path) if k not in before} == {"data/analysis=sinks/run_id=run-b",
                                                                  "data/analysis=sinks/run_id=run-c"}
    assert set(store.read()["run_id"]) == {"run-a"}


@pytest.mark.parametrize("method", ["start_run", "record_shard", "finish_run"])
def test_a_full_disk_while_writing_a_manifest_leaves_it_unchanged(tmp_path, monkeypatch, method):
    store = ResultStore(tmp_path)
    store.start_run("r1", {"model": "toy"})
    store.record_shard("r1", "sinks", "part-0", 6)
    before = snapshot(tmp_path)
    calls = {"start_run": ("r1", {"model": "toy"}), "record_shard": ("r1", "sinks", "part-1", 3),
             "finish_run": ("r1", "complete")}
    with monkeypatch.context() as patch:
        fail_with(patch, os, "write", errno.ENOSPC)
        with pytest.raises(StoreError) as info:
            getattr(store, method)(*calls[method])
    assert_one_line(info, f"could not write {tmp_path / 'runs' / 'r1.json'}", "(no space left on the device)",
                    "it was left unchanged", "free space")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("code", "words"), [
    (errno.EACCES, ["(permission denied)", "get write permission there or choose another directory"]),
    (errno.EROFS, ["(read-only file system)", "choose a directory on a writable file system"]),
])
def test_a_store_without_write_permission(tmp_path, monkeypatch, code, words):
    store = ResultStore(tmp_path / "store")
    store.write(rows())
    store.start_run("r1", {"model": "toy"})
    before = snapshot(tmp_path)
    with monkeypatch.context() as patch:  # files cannot be created in the store
        fail_with(patch, tempfile, "mkstemp", code)
        for call in (lambda: store.write(rows(), shard="part-1"), lambda: store.finish_run("r1", "complete")):
            with pytest.raises(StoreError) as info:
                call()
            assert_one_line(info, "could not write", "it was left unchanged", *words)
    with monkeypatch.context() as patch:  # nor the lock file opened for writing
        fail_with(patch, builtins, "open", code)
        with pytest.raises(StoreError) as info:
            store.record_shard("r1", "sinks", "part-0", 6)
        assert_one_line(info, f"could not lock the result store with {tmp_path / 'store' / '.lock'}", *words)
    with monkeypatch.context() as patch:  # nor a new store created
        fail_with(patch, Path, "mkdir", code)
        with pytest.raises(StoreError) as info:
            ResultStore(tmp_path / "new").write(rows())
        assert_one_line(info, f"could not create the result store {tmp_path / 'new'}", *words)
    assert snapshot(tmp_path) == before
    assert len(store.read()) == 6  # reading still works


def test_a_file_in_place_of_the_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / "file").write(rows())
    assert_one_line(info, "could not create the result store", "(a file is in the way of a directory)",
                    "move the file or choose another directory")
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / "file").read()
    assert_one_line(info, "no result store at", "pass --store")


@pytest.mark.parametrize("root", ["store\x00x", "store\nx"])
def test_a_store_path_with_a_control_character_is_refused(tmp_path, root):
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / root)
    assert_one_line(info, "holds a control character (NUL, newline, ...)", "pass --store with a plain directory path")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- store: damaged and newer files
DAMAGED_MANIFESTS = [
    (b"{not json", "(not valid JSON)"),
    (b"\xff\xfe\x00", "(not valid JSON)"),
    (b"[" * 100_000, "(nested too deeply)"),
    (b"[1, 2]", "(not a JSON object but an array)"),
    (b'"r1"', "(not a JSON object but a string)"),
    (b'{"run_id": "r1"}', "(no 'shards' field)"),
    (b'{"shards": {}}', "(no 'run_id' field)"),
    (b'{"run_id": 1, "shards": {}}', "('run_id' should be a string, not an integer)"),
    (b'{"run_id": "r1", "shards": []}', "('shards' should be an object, not an array)"),
    (b'{"run_id": "r1", "shards": {"sinks": 3}}', "(the shards of 'sinks' should be an object, not an integer)"),
    (b'{"run_id": "r9", "shards": {}}', "(it names run 'r9', not 'r1')"),
    (b'{"run_id": "r1", "shards": {}, "resumed_at": "x"}', "('resumed_at' should be an array, not a string)"),
    (b'{"run_id": "r1", "shards": {}, "started_at": 5}', "('started_at' should be a string, not an integer)"),
    (b'{"run_id": "r1", "shards": {}, "process": [1]}', "('process' should be an object or null, not an array)"),
    (b'{"run_id": "r1", "shards": {}, "format_version": "1"}', "('format_version' should be an integer, not a string)"),
    (b'{"run_id": "r1", "shards": {}, "format_version": true}',
     "('format_version' should be an integer, not a boolean)"),
    (b'{"run_id": "r1", "shards": {}, "status": "paused"}', "(unknown status 'paused')"),
]
MANIFEST_READERS = {
    "manifest": lambda store: store.manifest("r1"),
    "manifests": lambda store: store.manifests(),
    "start_run (resume)": lambda store: store.start_run("r1", {"model": "toy"}),
    "record_shard": lambda store: store.record_shard("r1", "sinks", "part-1", 3),
    "finish_run": lambda store: store.finish_run("r1", "complete"),
}


@pytest.mark.parametrize("reader", sorted(MANIFEST_READERS))
@pytest.mark.parametrize(("content", "problem"), DAMAGED_MANIFESTS, ids=[p for _, p in DAMAGED_MANIFESTS])
def test_a_damaged_manifest_is_one_line_on_every_path(tmp_path, reader, content, problem):
    store = ResultStore(tmp_path)
    store.start_run("r1", {"model": "toy"})
    (tmp_path / "runs" / "r1.json").write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as info:
        MANIFEST_READERS[reader](store)
    assert_one_line(info, f"corrupt run manifest {tmp_path / 'runs' / 'r1.json'} {problem}",
                    "restore it, or delete it and the run's data partitions (data/analysis=*/run_id=r1) and rerun")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("reader", sorted(MANIFEST_READERS))
def test_a_manifest_from_a_newer_mechbench_is_refused_on_every_path(tmp_path, reader):
    store = ResultStore(tmp_path)
    store.start_run("r1", {"model": "toy"})
    path = tmp_path / "runs" / "r1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 2}))
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as info:
        MANIFEST_READERS[reader](store)
    assert_one_line(info, f"run manifest {path} has format version 2, newer than this mechbench understands (1)",
                    "upgrade mechbench to read it")
    assert snapshot(tmp_path) == before


def test_an_unreadable_manifest_and_a_missing_run(tmp_path):
    store = ResultStore(tmp_path)
    store.start_run("r1", {"model": "toy"})
    (tmp_path / "runs" / "r2.json").mkdir()  # a directory where a manifest should be
    (tmp_path / "runs" / "notes about runs.json").write_text("ignored: not a run id")
    with pytest.raises(StoreError) as info:
        store.manifest("r2")
    assert_one_line(info, f"cannot read {tmp_path / 'runs' / 'r2.json'} (Is a directory)",
                    "make it a file you can read")
    (tmp_path / "runs" / "r1.json").write_text("{")
    with pytest.raises(StoreError) as info:  # listing the runs does not trip over the damaged one
        store.manifest("r3")
    assert_one_line(info, "no run 'r3' in", "(runs: r1, r2)")


@pytest.mark.parametrize(("content", "words"), [
    ("{", ["mechbench-store.json is corrupt", 'it should hold {"format_version": 1}']),
    ("[1]", ["mechbench-store.json is corrupt", 'it should hold {"format_version": 1}']),
    ('{"format_version": "1"}', ["mechbench-store.json is corrupt", 'it should hold {"format_version": 1}']),
    ('{"format_version": true}', ["mechbench-store.json is corrupt", 'it should hold {"format_version": 1}']),
    ('{"format_version": 7}', ["has format version 7, newer than this mechbench understands (1)",
                               "upgrade mechbench to read it"]),
])
def test_a_corrupt_or_newer_store_marker_is_refused_for_reading_and_writing(tmp_path, content, words):
    store = ResultStore(tmp_path)
    store.write(rows())
    store.start_run("r1", {"model": "toy"})
    (tmp_path / "mechbench-store.json").write_text(content)
    before = snapshot(tmp_path)
    for call in (store.read, lambda: store.write(rows(), shard="part-1"), lambda: store.finish_run("r1", "complete")):
        with pytest.raises(StoreError) as info:
            call()
        assert_one_line(info, *words)
    assert snapshot(tmp_path) == before


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda data: data[: len(data) // 2], "(ArrowInvalid)"),
    (lambda data: b"", "(ArrowInvalid)"),
    (lambda data: b"PAR1" + bytes(range(256)) * 4 + b"PAR1", "(ArrowInvalid)"),
    (lambda data: parquet_bytes(pd.DataFrame({"x": [1, 2]})),
     "(not in the tidy schema: result frame lacks required column(s) ['run_id', 'analysis', 'metric', 'model']"),
    (lambda data: parquet_bytes(rows().assign(layer="first")),
     "(not in the tidy schema: column 'layer' cannot be stored as Int64"),
    (lambda data: parquet_bytes(rows().assign(model=None)),
     "(not in the tidy schema: column 'model' has missing values"),
])
def test_a_corrupt_parquet_file_is_one_line(tmp_path, damage, reason):
    store = ResultStore(tmp_path)
    (path,) = store.write(rows())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreError) as info:
        store.read()
    assert_one_line(info, f"corrupt result file {path} {reason}",
                    "delete it and rerun that run with `mechbench analyze --resume run-a`")


def test_a_filter_with_several_values_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    store.write(rows())
    with pytest.raises(StoreError) as info:
        store.read(layer=[0, 1])
    assert_one_line(info, "cannot filter on layer=[0, 1]: a filter compares with one value")


# ---------------------------------------------------------------------------- store: two processes at once
SHARDS_PER_PROCESS = 30


def write_concurrently(root: str, name: str, start: Any) -> None:
    """One process of the race: its own run plus shards recorded in the shared run, all at once."""
    store = ResultStore(root)
    start.wait()
    store.start_run(f"run-{name}", {"model": "toy"})
    for i in range(SHARDS_PER_PROCESS):
        shard = f"{name}-{i}"
        for run_id in (f"run-{name}", "shared"):
            store.write(rows(run_id, n=3), shard=shard)
            store.record_shard(run_id, "sinks", shard, 3)
    store.finish_run(f"run-{name}", "complete")


def test_two_processes_writing_one_store_lose_nothing(tmp_path):
    store = ResultStore(tmp_path)
    store.start_run("shared", {"model": "toy"})
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    workers = [spawn.Process(target=write_concurrently, args=(str(tmp_path), name, start)) for name in "ab"]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    store.finish_run("shared", "complete")
    every = {f"{name}-{i}" for name in "ab" for i in range(SHARDS_PER_PROCESS)}
    for run_id, shards in (("run-a", {s for s in every if s[0] == "a"}), ("run-b", {s for s in every if s[0] == "b"}),
                           ("shared", every)):
        manifest = json.loads((tmp_path / "runs" / f"{run_id}.json").read_text())
        assert manifest["status"] == "complete"
        assert set(manifest["shards"]["sinks"]) == shards
        assert store.completed_shards("sinks", run_id) == shards
    assert len(store.read()) == 3 * 4 * SHARDS_PER_PROCESS
    assert not [p for p in tmp_path.rglob("*.tmp")]


# ---------------------------------------------------------------------------- config loader
def load_text(directory: Path, content: str | bytes) -> tuple[RunConfig, dict[str, Any]]:
    path = directory / "config.yaml"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return load_config(path)


def valid_or_one_line(call: Any, expected: type[MechbenchError] = ConfigError) -> None:
    """``call()`` succeeds or raises a one-line ``expected`` error; any other exception fails the test."""
    try:
        call()
    except expected as error:
        assert_one_line(error)


@PROPERTY
@given(content=st.text() | st.binary())
def test_any_file_content_loads_or_gives_one_line(content):
    with tempfile.TemporaryDirectory() as directory:
        valid_or_one_line(lambda: load_text(Path(directory), content))


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
                | st.integers(-(2**80), 2**80))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)
TOP_KEYS = st.sampled_from(sorted(RunConfig.model_fields)) | st.text(max_size=6)
ANALYSIS_NAMES = st.sampled_from(["sinks", "retrieval", "tappa", "distance", "circuits", "attribution", "patterns",
                                  "speech", "nope"])


@PROPERTY
@given(data=st.dictionaries(TOP_KEYS.filter(lambda k: k != "analyses"), JSON_VALUES, max_size=5) | JSON_VALUES)
def test_any_top_level_parses_or_gives_one_line(data):
    valid_or_one_line(lambda: parse_config(data, "fuzz.yaml"))


@st.composite
def analysis_blocks(draw: st.DrawFn) -> dict[str, Any]:
    """Analysis blocks mixing the real option names with junk keys and values of any JSON type."""
    from mechbench.analyses import ANALYSES

    blocks = {}
    for name in draw(st.lists(ANALYSIS_NAMES, max_size=2, unique=True)):
        fields = sorted(ANALYSES[name].config_model.model_fields) if name in ANALYSES else ["x"]
        keys = st.sampled_from(fields) | st.text(max_size=4)
        blocks[name] = draw(st.none() | JSON_VALUES | st.dictionaries(keys, JSON_VALUES, max_size=4))
    return blocks


def parse_and_check(blocks: dict[str, Any]) -> None:
    """What ``mechbench analyze`` does with analysis blocks before it loads a model."""
    from mechbench.analyses import ANALYSES

    for name, options in parse_config({"analyses": blocks}, "fuzz.yaml")[1].items():
        if ANALYSES[name].check is not None:
            ANALYSES[name].check(options)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=analysis_blocks())
def test_any_analysis_block_parses_or_gives_one_line(blocks):
    valid_or_one_line(lambda: parse_and_check(blocks), expected=MechbenchError)


@pytest.mark.parametrize("name", ["attribution", "circuits", "distance"])
def test_analysis_seeds_are_bounded_like_the_top_level_one(name):
    with pytest.raises(ConfigError) as info:
        parse_config({"analyses": {name: {"seed": 2**64}}}, "dict")
    assert_one_line(info, f"analyses.{name}.seed: Input should be less than 18446744073709551616")


def test_an_infinite_top_k_is_refused_before_the_model_loads():
    with pytest.raises(ConfigError) as info:
        parse_and_check({"circuits": {"rule": "top_k", "rule_value": float("inf")}})
    assert_one_line(info, "circuits.rule_value must be a whole number for top_k; got inf")


ALIASES = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)) + "model: *i\n"


@pytest.mark.parametrize(("text", "words"), [
    ("!!python/object/apply:os.system ['echo pwned']\n",
     ["uses the YAML tag !!python/object/apply:os.system at line 1, column 1", "configs are plain data",
      "remove the tag"]),
    ("model: !!python/name:os.system\n", ["uses the YAML tag !!python/name:os.system", "remove the tag"]),
    ("model: !custom toy\n", ["uses the YAML tag !custom at line 1, column 8", "remove the tag"]),
    ("seed: !!int many\n", ["has a value YAML cannot convert (invalid literal for int() with base 10: 'many')",
                            "fix the value, or quote it to make it a string"]),
    ("seed: " + "9" * 5000 + "\n", ["has a value YAML cannot convert (Exceeds the limit (4300 digits)",
                                    "fix the value, or quote it"]),
    ("seed: " + "9" * 1000 + "\n",
     ["seed: Input should be less than 18446744073709551616 (got <a 3322-bit integer>)"]),
    ("model: toy\n---\nmodel: other\n", ["holds 2 YAML documents", "remove the `---` separators"]),
    ("[" * 1000 + "]" * 1000, ["is nested too deeply for the YAML reader", "flatten it"]),
    ("? [a, b]\n: 1\n", ["is not valid YAML at line 1, column 3: found unhashable key", "fix the syntax"]),
    ("a\x00b", ["is not valid YAML: unacceptable character #x0000", "fix the syntax"]),
    ("1: toy\n", ["invalid config", "1: Keys should be strings (got 1)"]),
    ("model: [a, b]\n", ["model: Input should be a valid string (got ['a', 'b'])"]),
    (ALIASES, ["model: Input should be a valid string (got [[[...], [...], [...], [...], ...], [[...], "]),
    ("analyses:\n  sinks: []\n", ["analyses.sinks: Input should be a valid dictionary", "(got [])"]),
    ("analyses:\n  sinks: 0\n", ["analyses.sinks: Input should be a valid dictionary", "(got 0)"]),
    ("analyses:\n  sinks: {max_tokens: {a: [1, {b: 2}]}}\n",
     ["analyses.sinks.max_tokens: Input should be a valid integer (got {'a': [1, {...}]})"]),
    ("analyses:\n  7: {}\n", ["analyses.7.[key]: Input should be a valid string (got 7)"]),
    ("analyses:\n  sinks:\n    texts: \"" + "x" * 500 + "\"\n    nope: 1\n",
     ["analyses.sinks.nope: Extra inputs are not permitted (got 1)"]),
])
def test_bad_configs_give_one_actionable_line(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert_one_line(info, f"config {tmp_path / 'config.yaml'}", *words)
    assert len(str(info.value)) < 2000  # each field's value is cut to 120 characters


@pytest.mark.parametrize("name", ["config\x00.yaml", "con\nfig.yaml"])
def test_a_config_path_with_a_control_character_is_refused(tmp_path, name):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / name)
    assert_one_line(info, "holds a control character (NUL, newline, ...)", "rename the file or pass --config")


def test_an_unreadable_config(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("model: toy\n")
    fail_with(monkeypatch, Path, "read_text", errno.EACCES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line(info, f"cannot read config {path} (Permission denied)", "make it a file you can read")


def test_a_config_with_a_huge_key_or_value_in_a_dict():
    huge = 10**5000
    with pytest.raises(ConfigError) as info:
        parse_config({"model": huge, huge: 1}, "dict")
    assert_one_line(info, "model: Input should be a valid string (got <a 16610-bit integer>)")


def test_command_line_overrides_are_validated_like_a_config_file():
    assert with_overrides(RunConfig(), {"seed": 7, "model": "toy-planted"}).seed == 7
    with pytest.raises(ConfigError) as info:
        with_overrides(RunConfig(), {"seed": 2**70})
    assert_one_line(info, "invalid config (command-line options): seed: Input should be less than "
                    "18446744073709551616 (got 1180591620717411303424)")
