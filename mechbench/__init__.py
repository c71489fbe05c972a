"""mechbench: mechanistic interpretability of transformer attention, in one tidy table.

``mechbench.load_model(spec)`` -> HookedModel; ``mechbench.ResultStore(path).read(...)`` -> DataFrame;
``mechbench.analyses.<name>`` for metric functions and runners. Imports are lazy so that the CLI
starts without loading torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["HookedModel", "Recorder", "ResultStore", "load_model"]

_LAZY = {
    "load_model": ("mechbench.models.loading", "load_model"),
    "HookedModel": ("mechbench.core.hooked", "HookedModel"),
    "Recorder": ("mechbench.core.recorder", "Recorder"),
    "ResultStore": ("mechbench.store.result_store", "ResultStore"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'mechbench' has no attribute {name!r}")
