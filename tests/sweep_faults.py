"""A Ray worker setup hook for tests/test_sweep.py: the first ``patterns`` shard any worker starts kills its
worker process (``os._exit``) after the model is loaded and before the partition is written, like a
preempted machine. ``$MECHBENCH_TEST_CRASH_MARKER`` is created (exclusively) by that one crash, so the
retry and every other shard run normally."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


def crash_first_patterns_shard() -> None:
    """Replace the ``patterns`` analysis of this worker with one that dies the first time in the cluster."""
    from mechbench.analyses import ANALYSES

    spec = ANALYSES["patterns"]
    marker = os.environ["MECHBENCH_TEST_CRASH_MARKER"]

    def run_or_die(model: Any, options: Any, progress: bool) -> Any:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return spec.run(model, options, progress)
        os._exit(1)

    ANALYSES["patterns"] = dataclasses.replace(spec, run=run_or_die)
