"""Interrupted and concurrent runs of the real console script.

`mechbench analyze` stopped mid-run by SIGINT, SIGTERM or SIGKILL keeps only complete partitions, its
manifest says ``interrupted``, and ``--resume`` finishes it without recomputing what was written, into
the same table an uninterrupted run gives. Two `mechbench analyze` processes writing into one store at
once both finish, and each run's table is the one a run alone gives.

Each run is the console-script entry point (``mechbench.cli.main``) in a forked child, so it inherits the
already imported torch instead of importing it again (minutes on the CI machine). A child to interrupt
signals itself right after the manifest records the first analysis: a deterministic "mid-run".
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechbench.cli import app, main
from mechbench.errors import StoreError
from mechbench.runner import plan_run
from mechbench.store import ResultStore

ANALYSES = "  sinks: {max_tokens: 12, limit: 3}\n  patterns: {max_tokens: 8, limit: 2}\n"


def write_config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"model: {model}\nstore: {tmp_path / 'store'}\nanalyses:\n{ANALYSES}")
    return path


def start_analyze(argv: list[str], out: Path, signum: int | None = None) -> int:
    """Fork a child that runs the console script with ``argv`` (and, with ``signum``, sends itself that
    signal once the first analysis is recorded); its stdout and stderr go to ``out``. Returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never return into pytest
        import torch

        torch.set_num_threads(1)  # OpenMP's thread pool does not survive fork
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        sys.stdout = sys.stderr = open(descriptor, "w", buffering=1)  # noqa: SIM115 (pytest replaced both)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signum is not None:
            record_shard = ResultStore.record_shard

            def record_then_signal(self: ResultStore, *args: object, **kwargs: object) -> None:
                record_shard(self, *args, **kwargs)
                os.kill(os.getpid(), signum)

            ResultStore.record_shard = record_then_signal  # type: ignore[method-assign]
        sys.argv = ["mechbench", *argv]
        main()
    finally:
        os._exit(99)  # main() leaves with os._exit itself; reaching here means it raised


def table(store: ResultStore, run: str):
    """A run's rows without the run id: what two runs of one config must share."""
    return store.read(run_id=run).drop(columns="run_id").reset_index(drop=True)


@pytest.fixture
def one_thread():
    """The child computes with one thread; so does this process, so both sum floats in the same order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_killed_run_keeps_whole_partitions_and_resumes_to_the_same_table(tmp_path, tiny_llama_dir, one_thread, signum):
    config = write_config(tmp_path, tiny_llama_dir)
    store = ResultStore(tmp_path / "store")
    args = ["analyze", "--config", str(config), "--no-progress", "--no-report"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--run-id", "whole"], catch_exceptions=False).exit_code == 0

    status = os.waitpid(start_analyze([*args, "--run-id", "cut"], tmp_path / "out.txt", signum), 0)[1]
    output = (tmp_path / "out.txt").read_text()
    if signum == signal.SIGKILL:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, output
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, output
        assert output.strip().splitlines() == [
            f"interrupted: run cut is marked interrupted in {store.root}; the analyses written in full are kept; "
            "finish it with the same options plus --resume cut"]

    manifest = store.manifest("cut")
    assert manifest["status"] == "interrupted"  # for SIGKILL: its process is gone although the file says running
    assert list(manifest["shards"]) == ["sinks"]
    assert store.completed_shards("sinks", "cut") == {"part-0"}
    assert not (store.root / "data" / "analysis=patterns" / "run_id=cut").exists()
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    sinks_file = store.root / "data" / "analysis=sinks" / "run_id=cut" / "part-0.parquet"
    written = sinks_file.stat()

    resumed = runner.invoke(app, [*args, "--resume", "cut"], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.startswith("run cut: ") and " rows for patterns -> " in resumed.output
    after = sinks_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not recomputed
    assert store.manifest("cut")["status"] == "complete"

    assert table(store, "cut").equals(table(store, "whole"))


def test_two_analyze_processes_into_one_store_lose_nothing(tmp_path, tiny_llama_dir, one_thread):
    config = write_config(tmp_path, tiny_llama_dir)
    store = ResultStore(tmp_path / "store")
    args = ["analyze", "--config", str(config), "--no-progress", "--no-report"]
    assert CliRunner().invoke(app, [*args, "--run-id", "alone"], catch_exceptions=False).exit_code == 0

    children = {run: start_analyze([*args, "--run-id", run], tmp_path / f"{run}.txt") for run in ("left", "right")}
    for run, pid in children.items():
        status = os.waitpid(pid, 0)[1]
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (tmp_path / f"{run}.txt").read_text()
    for run in children:
        manifest = store.manifest(run)
        assert manifest["status"] == "complete"
        assert sorted(manifest["shards"]) == ["patterns", "sinks"]
        assert table(store, run).equals(table(store, "alone"))
    assert sorted(m["run_id"] for m in store.manifests()) == ["alone", "left", "right"]
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]


def test_a_run_whose_process_still_runs_is_not_resumed(tmp_path, tiny_llama_dir):
    config = write_config(tmp_path, tiny_llama_dir)
    store = ResultStore(tmp_path / "store")
    store.start_run("busy", {"model": str(tiny_llama_dir), "config": {"seed": 0}})  # this process: alive
    assert store.manifest("busy")["status"] == "running"
    with pytest.raises(StoreError, match=rf"run 'busy' is still running \(process {os.getpid()} on .*\); wait"):
        plan_run(config, [], resume="busy")
