"""The user cache directory for converted weights and trained toy models.

``$MECHBENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/mechbench``, else ``~/.cache/mechbench``.
Artifacts are built once into a temporary sibling directory and renamed into place under a file
lock, so two processes never see or build a half-written model.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """Root of mechbench's cache (created on demand)."""
    explicit = os.environ.get("MECHBENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mechbench"


def build_once(target: Path, build: Callable[[Path], None], message: str) -> Path:
    """Return ``target``, building it first with ``build(tmp_dir)`` if it does not exist yet.

    ``message`` is printed to stderr while building (conversions take tens of seconds); what the
    build itself writes there (the converters' progress bars) is swallowed, so the user sees two lines.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if target.exists():  # another process built it while we waited
            return target
        started = time.monotonic()
        print(f"mechbench: {message} -> {target} (one time only)...", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tmp.chmod(0o755)
            with contextlib.redirect_stderr(io.StringIO()):
                build(tmp)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
        print(f"mechbench: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return target
