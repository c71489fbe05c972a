"""Ending processes without the interpreter teardown: the status and every buffered byte survive."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, check=False)


def test_skip_teardown_keeps_the_status_and_flushes_piped_output():
    # piped stdout is block-buffered: os._exit without a flush would lose "out"
    result = run("-c", "import sys; from mechbench.process import skip_teardown_at_exit; "
                       "skip_teardown_at_exit(lambda: 3); print('out', end=''); sys.stderr.write('err')")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out", "err")


def test_console_script_exit_status_and_output():
    listed = run("-m", "mechbench.cli", "models")
    assert listed.returncode == 0 and "smollm2-135m" in listed.stdout and "toy-planted" in listed.stdout
    usage = run("-m", "mechbench.cli", "show", "--top", "many")
    assert usage.returncode == 2 and "Invalid value" in usage.stderr  # click's usage error, its own status
