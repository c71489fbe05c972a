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


def test_process_is_running_tells_alive_ended_reused_and_foreign_processes():
    import os

    from mechbench.process import process_fingerprint, process_is_running

    me = process_fingerprint()
    assert me["pid"] == os.getpid() and process_is_running(me) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    assert process_is_running({**me, "pid": child.pid}) is False
    if me["start_ticks"] is not None:  # Linux: a pid reused by a later process is not the run's process
        assert process_is_running({**me, "start_ticks": me["start_ticks"] - 1}) is False
    assert process_is_running({**me, "host": me["host"] + "-elsewhere"}) is None
