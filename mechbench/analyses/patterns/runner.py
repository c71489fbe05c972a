"""Model-running code of the patterns analysis: record ``hook_pattern`` one text at a time."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import Tensor

from mechbench.core.dataset import Batch
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_layers
from mechbench.core.recorder import Recorder
from mechbench.core.tidy import finish_rows
from mechbench.tasks.texts import load_texts

from .config import PatternsConfig
from .rows import ANALYSIS, METRIC, pattern_rows


def run_patterns(model: HookedModel, texts: Sequence[str], *, example_ids: Sequence[str] | None = None,
                 max_tokens: int = 32, layers: Sequence[int] | None = None, prepend_bos: bool | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Record ``hook_pattern`` for every requested layer of each text (one text per forward pass, so
    no padding enters a pattern) and return its rows with ``layer`` and ``example`` filled in."""
    dataset = model.tokenize_dataset(texts, max_tokens=max_tokens, prepend_bos=prepend_bos, example_ids=example_ids)
    parts: list[pd.DataFrame] = []

    def keep(layer: int, pattern: Tensor, batch: Batch) -> None:
        index = int(batch.indices[0])
        n = int(batch.lengths[0])
        rows = pattern_rows(pattern[0, :, :n, :n], dataset.token_texts[index], model.causal)
        rows.insert(0, "layer", layer)
        rows.insert(2, "example", dataset.example_ids[index])
        parts.append(rows)

    Recorder(model, batch_size=1, progress=progress).run(dataset, {"pattern": keep}, layers,
                                                         description="attention patterns")
    frame = pd.concat(parts, ignore_index=True)
    frame["metric"] = METRIC
    return finish_rows(frame, ANALYSIS, model.name).sort_values(
        ["example", "layer", "head", "position", "key_position"], kind="stable", ignore_index=True)


def run_patterns_from_config(model: HookedModel, config: PatternsConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI."""
    if config.layers is not None:
        check_layers("patterns.layers", config.layers, config.layers, model.n_layers, model.name)
    ids, texts = load_texts(config.texts, config.limit)
    return run_patterns(model, texts, example_ids=ids, max_tokens=config.max_tokens, layers=config.layers,
                        prepend_bos=config.prepend_bos, progress=progress)
