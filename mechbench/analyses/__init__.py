"""Analyses: one module each (pure metric functions + a runner), registered here for the CLI.

The registry is explicit: :func:`register_analysis` refuses duplicates, and the CLI's choices and
help text come from it, so an analysis that is not registered cannot be half-visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from mechbench.config import StrictModel
from mechbench.core.hooked import HookedModel


@dataclass(frozen=True)
class AnalysisSpec:
    """What the CLI needs to know about an analysis."""

    name: str
    description: str
    citation: str
    config_model: type[StrictModel]
    run: Callable[[HookedModel, StrictModel, bool], pd.DataFrame]
    #: per-head metrics `mechbench show` and the report rank by default, in order of preference: a run's
    #: options decide which it writes (e.g. circuits without activation patching); empty: no ranking.
    headline_metrics: tuple[str, ...]
    headline_position: int | None = None
    #: checks the options need no model for (e.g. the dataset exists and is not empty), run before loading
    check: Callable[[StrictModel], None] | None = None
    #: the analysis's own figures for the report and notebooks (beyond the generic per-head heatmaps);
    #: each takes the analysis's rows of one run and returns only non-empty figures
    figures: Callable[[pd.DataFrame], list[go.Figure]] | None = None

    def headline_metric(self, written: Iterable[str]) -> str | None:
        """The first of :attr:`headline_metrics` among the metrics a run ``written`` (None if none is)."""
        present = set(written)
        return next((metric for metric in self.headline_metrics if metric in present), None)


ANALYSES: dict[str, AnalysisSpec] = {}


def register_analysis(spec: AnalysisSpec) -> AnalysisSpec:
    """Add an analysis to the registry; a second registration of the same name is an error."""
    if spec.name in ANALYSES:
        raise ValueError(f"analysis {spec.name!r} is already registered")
    ANALYSES[spec.name] = spec
    return spec


def unknown_analysis_message(name: str) -> str:
    """The one-line explanation for an analysis name that is not registered."""
    return f"unknown analysis {name!r}; available: {', '.join(sorted(ANALYSES))}"


def _register_builtin() -> None:
    from mechbench import figures
    from mechbench.analyses import attribution, circuits, distance, patterns, retrieval, sinks, speech, tappa

    register_analysis(AnalysisSpec(
        name=sinks.ANALYSIS,
        description="attention sinks: sink scores and rate, hidden sinks, massive activations, ACT calibration, "
                    "StreamingLLM cache check",
        citation="Gu et al. 2024, When Attention Sink Emerges in Language Models (arXiv 2410.10781)",
        config_model=sinks.SinksConfig,
        run=sinks.run_sinks_from_config,
        headline_metrics=("sink_score_mean",),
        headline_position=0,
        check=sinks.check_config,
        figures=figures.sinks_figures,
    ))
    register_analysis(AnalysisSpec(
        name=retrieval.ANALYSIS,
        description="retrieval-head scores per head from needle-in-a-haystack copy-paste events",
        citation="Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality (arXiv 2404.15574)",
        config_model=retrieval.RetrievalConfig,
        run=retrieval.run_retrieval_from_config,
        headline_metrics=("retrieval_score",),
        check=retrieval.check_config,
        figures=figures.retrieval_figures,
    ))
    register_analysis(AnalysisSpec(
        name=distance.ANALYSIS,
        description="local vs global heads by attention span; WAAD and FAI along a reasoning response, their peaks "
                    "and how they couple",
        citation="Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables "
                 "Fine-Grained Policy Optimization (arXiv 2510.13554)",
        config_model=distance.DistanceConfig,
        run=distance.run_distance_from_config,
        headline_metrics=("head_span",),
        check=distance.check_config,
        figures=figures.distance_figures,
    ))
    register_analysis(AnalysisSpec(
        name=patterns.ANALYSIS,
        description="whole attention patterns of a few short prompts, for the attention explorer",
        citation="attention weights softmax(QK^T/sqrt(d)) as recorded at hook_pattern",
        config_model=patterns.PatternsConfig,
        run=patterns.run_patterns_from_config,
        headline_metrics=(),
        check=patterns.check_config,
        figures=figures.patterns_figures,
    ))
    register_analysis(AnalysisSpec(
        name=circuits.ANALYSIS,
        description="circuit discovery on clean/corrupt pair tasks (IOI, Colored Objects): activation and "
                    "attribution patching, direct logit attribution, path patching, EAP / EAP-IG; circuits, "
                    "faithfulness and overlap across tasks with a permutation baseline",
        citation="Merullo, Eickhoff, Pavlick 2024, Circuit Component Reuse Across Tasks in Transformer Language "
                 "Models (arXiv 2310.08744); Wang et al. 2022 (arXiv 2211.00593)",
        config_model=circuits.CircuitsConfig,
        run=circuits.run_circuits_from_config,
        headline_metrics=("act_patch_noising", "act_patch_denoising", "attr_patch", "path_patch", "dla"),
        check=circuits.check_config,
        figures=figures.circuits_figures,
    ))
    register_analysis(AnalysisSpec(
        name=attribution.ANALYSIS,
        description="attention vs input attribution: saliency, input x gradient, integrated gradients and occlusion "
                    "against per-head / per-layer / all-layer / rollout attention (correlations, top-k overlap, "
                    "deletion and insertion curves), and grounding shares on cited passages",
        citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010); "
                 "Pandya 2026, XKD-Dial (arXiv 2603.18911); Sundararajan et al. 2017 (integrated gradients)",
        config_model=attribution.AttributionConfig,
        run=attribution.run_attribution_from_config,
        headline_metrics=("pearson", "grounding_share"),
        check=attribution.check_config,
        figures=figures.attribution_figures,
    ))
    register_analysis(AnalysisSpec(
        name=speech.ANALYSIS,
        description="speech-to-text (Whisper): cross-attention per head / layer / all layers vs gradient and "
                    "occlusion saliency of the log-mel input, pooled to the encoder frames; word error rate",
        citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010)",
        config_model=speech.SpeechConfig,
        run=speech.run_speech_from_config,
        headline_metrics=("xattn_saliency_pearson",),
        check=speech.check_config,
        figures=figures.speech_figures,
    ))
    register_analysis(AnalysisSpec(
        name=tappa.ANALYSIS,
        description="TAPPA query self-similarity per head and layer, pattern types and their relation to it, RoPE "
                    "frequency bands, and q-sim-driven KV budgets and layer pruning scored by loss",
        citation="Yang et al. 2026, Why Attention Patterns Exist: A Unifying Temporal Perspective Analysis "
                 "(ICLR 2026, arXiv 2601.21709)",
        config_model=tappa.TappaConfig,
        run=tappa.run_tappa_from_config,
        headline_metrics=("q_similarity",),
        check=tappa.check_config,
        figures=figures.tappa_figures,
    ))


_register_builtin()
