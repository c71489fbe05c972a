"""Ending a process without CPython's interpreter teardown.

With torch, transformers and TransformerLens loaded, the teardown after the last line of a program
(clearing millions of module-level objects and collecting garbage between module clears) ran for
tens of minutes on our 2-core CI machine, although every result was written and closed: a test
process that finished its tests at 11:50 was still tearing down at 12:30. Command-line entry points
therefore flush their streams and leave with ``os._exit`` once their work is done.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def exit_now(status: int) -> None:
    """Flush stdout, stderr and logging, then end the process at once with ``status``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken pipe: nothing more to write
            stream.flush()
    os._exit(status)


def exit_status(code: object) -> int:
    """The process status ``sys.exit(code)`` gives: 0 for None, the int itself, else 1 (after printing it)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def skip_teardown_at_exit(status: Callable[[], int]) -> None:
    """At interpreter exit, after the atexit handlers registered later than this one, leave with ``status()``."""
    atexit.register(lambda: exit_now(status()))


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks after boot) of ``pid`` from ``/proc``, None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])  # fields 3 and 22 of proc(5); the command name may hold spaces


def process_fingerprint() -> dict[str, Any]:
    """Who this process is: host, pid and (on Linux) start time, which tells a pid reused later apart."""
    stat = _proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": stat[1] if stat else None}


def process_is_running(fingerprint: Mapping[str, Any]) -> bool | None:
    """Whether the process of ``fingerprint`` still runs; None when that cannot be known (another host)."""
    if fingerprint.get("host") != socket.gethostname() or not isinstance(fingerprint.get("pid"), int):
        return None
    pid = fingerprint["pid"]
    if fingerprint.get("start_ticks") is not None and Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)  # a zombie (killed, not yet reaped) counts as ended
        return stat is not None and stat[0] != "Z" and stat[1] == fingerprint["start_ticks"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
