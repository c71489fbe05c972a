"""ResultStore: exact round trip, atomic writes, filters, manifests, and one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from mechbench.errors import StoreError
from mechbench.store import CORE_COLUMNS, ResultStore, conform


def sample_frame(run_id: str = "run-a", analysis: str = "sinks", n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "run_id": run_id, "analysis": analysis, "metric": ["sink_score"] * (n - 2) + ["sink_rate"] * 2,
        "model": "toy", "layer": [*list(rng.integers(0, 4, n - 2)), None, None],
        "head": [*list(rng.integers(0, 8, n - 2)), None, None], "example": ["ex0"] * (n - 2) + [None, None],
        "position": rng.integers(0, 64, n), "value": rng.standard_normal(n),
        "token": ["<s>"] * n, "epsilon": [np.nan] * (n - 2) + [0.3, 0.3],
    })
    frame.loc[3, "value"] = 1e-300  # extreme values survive
    frame.loc[4, "value"] = -np.inf
    return frame


def test_round_trip_is_exact(tmp_path):
    store = ResultStore(tmp_path / "store")
    frame = conform(sample_frame())
    store.write(frame)
    back = store.read()
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert list(back.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert str(back["layer"].dtype) == "Int64" and back["layer"].isna().sum() == 2


def test_filters_and_partitions(tmp_path):
    store = ResultStore(tmp_path)
    store.write(sample_frame("run-a"))
    store.write(sample_frame("run-b", n=10))
    assert len(store.read()) == 60
    assert len(store.read(run_id="run-b")) == 10
    assert set(store.read(metric="sink_rate")["metric"]) == {"sink_rate"}
    assert len(store.read(analysis="sinks", layer=0)) == (sample_frame()["layer"] == 0).sum() + (
        sample_frame(n=10)["layer"] == 0).sum()
    assert store.read(analysis="retrieval").empty
    assert (tmp_path / "data" / "analysis=sinks" / "run_id=run-a" / "part-0.parquet").is_file()
    with pytest.raises(StoreError, match="no such column"):
        store.read(nonexistent=1)


def test_interrupted_write_leaves_no_partial_partition(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write(sample_frame(), shard="part-0")
    before = store.read()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # interrupted between writing the temp file and publishing it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write(sample_frame(n=20), shard="part-1")
    monkeypatch.undo()
    partition = tmp_path / "data" / "analysis=sinks" / "run_id=run-a"
    assert sorted(p.name for p in partition.iterdir()) == ["part-0.parquet"]  # no temp file, no part-1
    pd.testing.assert_frame_equal(store.read(), before)
    assert store.completed_shards("sinks", "run-a") == {"part-0"}


def test_rewriting_a_shard_replaces_it(tmp_path):
    store = ResultStore(tmp_path)
    store.write(sample_frame(n=30))
    store.write(sample_frame(n=12))
    assert len(store.read()) == 12


def test_corrupt_file_gives_one_line_error(tmp_path):
    store = ResultStore(tmp_path)
    (path,) = store.write(sample_frame())
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(StoreError, match=r"corrupt result file .*--resume") as info:
        store.read()
    assert "\n" not in str(info.value)


def test_newer_store_format_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    store.write(sample_frame())
    (tmp_path / "mechbench-store.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(StoreError, match="upgrade mechbench"):
        store.read()


def test_bad_frames_are_refused(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(StoreError, match="required column"):
        store.write(pd.DataFrame({"value": [1.0]}))
    with pytest.raises(StoreError, match="empty result frame"):
        store.write(sample_frame().iloc[:0])
    with pytest.raises(StoreError, match="not a valid name"):
        store.write(sample_frame(run_id="../escape"))
    bad = sample_frame()
    bad.loc[0, "model"] = None
    with pytest.raises(StoreError, match="'model' has missing values"):
        store.write(bad)


def test_manifest_lifecycle(tmp_path):
    store = ResultStore(tmp_path)
    store.start_run("r1", {"model": "toy", "seed": 3, "config": {"a": 1}})
    assert store.manifest("r1")["status"] == "running"
    store.record_shard("r1", "sinks", "part-0", 50)
    store.finish_run("r1", "interrupted")
    manifest = store.manifest("r1")
    assert manifest["status"] == "interrupted" and manifest["shards"]["sinks"]["part-0"]["rows"] == 50
    store.start_run("r1", {"model": "toy", "seed": 3, "config": {"a": 1}})  # resume
    store.finish_run("r1", "complete")
    manifest = store.manifest("r1")
    assert manifest["status"] == "complete" and len(manifest["resumed_at"]) == 1
    assert manifest["shards"]["sinks"]["part-0"]["rows"] == 50  # resuming keeps what was done
    with pytest.raises(StoreError, match=r"no run 'r2'.*runs: r1"):
        store.manifest("r2")


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no result store"):
        ResultStore(tmp_path / "nope").read()
