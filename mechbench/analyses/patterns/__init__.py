"""Whole attention patterns of a few short prompts: the data behind the attention explorer.

Every other analysis reduces attention inside the hook; this one keeps ``A[l, h, q, k]`` itself,
for the handful of short inputs a person can read token by token (the explorer in the report and
in notebooks, :func:`mechbench.plots.attention_explorer`). Rows grow as
``layers x heads x L^2 / 2`` per prompt (causal), so ``max_tokens`` is capped at 128.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec

from .config import PatternsConfig, check_config
from .metrics import visible_entries
from .rows import ANALYSIS, METRIC, pattern_rows
from .runner import run_patterns, run_patterns_from_config

__all__ = [
    "ANALYSIS",
    "METRIC",
    "SPEC",
    "PatternsConfig",
    "check_config",
    "pattern_rows",
    "run_patterns",
    "run_patterns_from_config",
    "visible_entries",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="whole attention patterns of a few short prompts, for the attention explorer",
    citation="attention weights softmax(QK^T/sqrt(d)) as recorded at hook_pattern",
    config_model=PatternsConfig,
    run=run_patterns_from_config,
    headline_metrics=(),
    check=check_config,
    figures="mechbench.analyses.patterns.figures",
    text_sharded=True,
    context_length_options=lambda length: {"max_tokens": length},
)
