"""Options of the patterns analysis: the ``analyses.patterns`` config block and its checks."""

from __future__ import annotations

from pydantic import Field

from mechbench.config import StrictModel
from mechbench.errors import ConfigError
from mechbench.tasks.texts import BUILTIN, load_texts


class PatternsConfig(StrictModel):
    """Options of the ``patterns`` analysis (config block ``analyses.patterns``)."""

    texts: str = Field(BUILTIN, description="'builtin', or a .jsonl / .txt file of texts")
    limit: int = Field(2, ge=1, le=16, description="keep the patterns of the first N texts")
    max_tokens: int = Field(32, ge=2, le=128, description="truncate each text to N tokens (rows grow as N^2)")
    layers: list[int] | None = Field(None, description="layers to keep (default: all)")
    prepend_bos: bool | None = Field(None, description="None = the tokenizer's setting; True/False force it")


def check_config(config: PatternsConfig) -> None:
    """Fail before any model is loaded when the text set is missing or empty, or a layer is negative."""
    load_texts(config.texts, config.limit)
    if config.layers is not None and any(layer < 0 for layer in config.layers):
        raise ConfigError(f"patterns.layers {config.layers} has a negative layer; give layer indices from 0")
