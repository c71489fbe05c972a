"""Provenance recorded in every run manifest: what ran, on which weights, with which software."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from mechbench.core.model import ModelInterface

TRACKED_PACKAGES = ("mechbench", "torch", "transformers", "transformer-lens", "pandas", "pyarrow", "captum",
                    "plotly", "gguf")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory: Path | None = None) -> str | None:
    """The commit of the mechbench source tree (with ``-dirty`` if modified), or None outside git."""
    where = directory or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def model_provenance(model: ModelInterface) -> dict[str, Any]:
    """Name, source, weight fingerprint and architecture facts of a loaded model."""
    a = model.architecture
    return {
        "model": model.name,
        "model_source": model.source,
        "weights_sha256": model.fingerprint(),
        "architecture": {"n_layers": a.n_layers, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads,
                         "d_head": a.d_head, "d_model": a.d_model, "n_ctx": a.n_ctx, "positional": a.positional,
                         "causal": a.causal, "has_cross_attention": a.has_cross_attention},
        "tokenizer": getattr(model.tokenizer, "name_or_path", None),
    }


def run_provenance(config: dict[str, Any], seed: int, model: ModelInterface) -> dict[str, Any]:
    """Everything a run manifest records besides status and shards."""
    return {"config": config, "seed": seed, "versions": package_versions(), "git_commit": git_commit(),
            "command": sys.argv, **model_provenance(model)}
