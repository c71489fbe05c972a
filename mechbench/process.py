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
import sys
from collections.abc import Callable


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
