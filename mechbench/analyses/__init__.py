"""Analyses: one module each (pure metric functions + a runner), registered here for the CLI.

The registry is explicit: :func:`register_analysis` refuses duplicates, and the CLI's choices and
help text come from it, so an analysis that is not registered cannot be half-visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from mechbench.config import StrictModel
from mechbench.core.hooked import HookedModel

#: Names reserved by the design for analyses (some not implemented yet).
PLANNED = ("retrieval", "sinks", "tappa", "distance", "circuits", "attribution")


@dataclass(frozen=True)
class AnalysisSpec:
    """What the CLI needs to know about an analysis."""

    name: str
    description: str
    citation: str
    config_model: type[StrictModel]
    run: Callable[[HookedModel, StrictModel, bool], pd.DataFrame]
    #: (metric, position) whose per-head values `mechbench show` ranks by default.
    headline_metric: str
    headline_position: int | None = None
    #: checks the options need no model for (e.g. the dataset exists and is not empty), run before loading
    check: Callable[[StrictModel], None] | None = None


ANALYSES: dict[str, AnalysisSpec] = {}


def register_analysis(spec: AnalysisSpec) -> AnalysisSpec:
    """Add an analysis to the registry; a second registration of the same name is an error."""
    if spec.name in ANALYSES:
        raise ValueError(f"analysis {spec.name!r} is already registered")
    ANALYSES[spec.name] = spec
    return spec


def unknown_analysis_message(name: str) -> str:
    """The one-line explanation for an analysis name that is not registered."""
    available = ", ".join(sorted(ANALYSES))
    if name in PLANNED:
        return f"analysis {name!r} is planned but not implemented in this version; available: {available}"
    return f"unknown analysis {name!r}; available: {available}"


def _register_builtin() -> None:
    from mechbench.analyses import distance, retrieval, sinks, tappa

    register_analysis(AnalysisSpec(
        name=sinks.ANALYSIS,
        description="attention sinks: sink scores and rate, hidden sinks, massive activations, ACT calibration, "
                    "StreamingLLM cache check",
        citation="Gu et al. 2024, When Attention Sink Emerges in Language Models (arXiv 2410.10781)",
        config_model=sinks.SinksConfig,
        run=sinks.run_sinks_from_config,
        headline_metric="sink_score_mean",
        headline_position=0,
        check=sinks.check_config,
    ))
    register_analysis(AnalysisSpec(
        name=retrieval.ANALYSIS,
        description="retrieval-head scores per head from needle-in-a-haystack copy-paste events",
        citation="Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality (arXiv 2404.15574)",
        config_model=retrieval.RetrievalConfig,
        run=retrieval.run_retrieval_from_config,
        headline_metric="retrieval_score",
        check=retrieval.check_config,
    ))
    register_analysis(AnalysisSpec(
        name=distance.ANALYSIS,
        description="local vs global heads by attention span; WAAD and FAI along a reasoning response, their peaks "
                    "and how they couple",
        citation="Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables "
                 "Fine-Grained Policy Optimization (arXiv 2510.13554)",
        config_model=distance.DistanceConfig,
        run=distance.run_distance_from_config,
        headline_metric="head_span",
        check=distance.check_config,
    ))
    register_analysis(AnalysisSpec(
        name=tappa.ANALYSIS,
        description="TAPPA query self-similarity per head and layer, pattern types and their relation to it, RoPE "
                    "frequency bands, and q-sim-driven KV budgets and layer pruning scored by loss",
        citation="Yang et al. 2026, Why Attention Patterns Exist: A Unifying Temporal Perspective Analysis "
                 "(ICLR 2026, arXiv 2601.21709)",
        config_model=tappa.TappaConfig,
        run=tappa.run_tappa_from_config,
        headline_metric="q_similarity",
        check=tappa.check_config,
    ))


_register_builtin()
