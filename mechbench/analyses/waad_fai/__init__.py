"""WAAD and FAI: local vs global heads and the preplan-and-anchor rhythm of a reasoning response.

Li et al. 2025, "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization" (arXiv 2510.13554; no official code). One forward pass over
prompt ⊕ response; ``R`` = the response rows (query positions), ``A[l,h]`` = the causal pattern
(``docs/metrics/waad_fai.md``):

* head span (Eq. 7): ``d(l,h) = 1/|R| sum_{t in R} sum_{s<=t} A[l,h][t,s] (t - s)``;
* head groups (Eq. 8): heads sorted by ``d``; the bottom 30 % are local (``H_loc``), the top 30 %
  global (``H_glob``); the group maps ``Abar_loc``, ``Abar_glob`` are plain means of their patterns;
* WAAD (Eq. 9): ``WAAD_t = sum_{s<=t} Abar_loc[t,s] min(t - s, W)``, ``W = 10``;
* FAI (Eq. 10): ``FAI_s = 1/|T(s)| sum_{t in T(s)} Abar_glob[t,s]`` with
  ``T(s) = {t in R : s + H_lo <= t <= min(N, s + H_hi)}``.

Streaming: WAAD and FAI are linear in the pattern, so the mean over a group's heads of per-head
WAAD (FAI) equals the WAAD (FAI) of the group map. :class:`DistanceReducer` reads each layer's
response rows block by block (an :class:`~mechbench.core.fused.AttentionView`, fused by default) and
keeps, per example, ``d`` and per-head WAAD and FAI vectors (``[layer, head, |R|]``): the span and
WAAD of a row need only that row, and FAI's numerator is a column sum over the future response rows,
accumulated block by block (:func:`future_attention_mass`). Groups are chosen after the pass (from
``d`` averaged over the examples) and the group means are taken over the kept vectors. Peak memory
is one block of rows (bounded) plus ``2 x layers x heads x |R|`` floats per example, never a
``[head, T, T]`` pattern on the fused path. The pure functions (:func:`head_spans`, :func:`waad`,
:func:`fai`) take full patterns and share the per-row arithmetic with the reducer.

[INFERRED] (not specified by the paper): the analysis horizon starts at ``H_lo = 1`` (a token's
attention to itself is not future attention), groups are chosen once per dataset, the peak rule
(:func:`find_peaks`), receiver heads at token level (:func:`kurtosis` of per-head FAI), the entropy
of a response token (that of the distribution that emitted it) and the windows of the coupling
statistics (:func:`coupling_statistics`).
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.waad_fai.config import DistanceConfig, check_config
from mechbench.analyses.waad_fai.metrics import (
    Head,
    _group_mean,
    _response_rows,
    fai,
    fai_from_mass,
    find_peaks,
    future_attention_mass,
    head_spans,
    horizon_sizes,
    kurtosis,
    lag_weighted_sum,
    near,
    next_token_entropy,
    random_positions,
    split_heads,
    waad,
    windowed_distance,
)
from mechbench.analyses.waad_fai.reducers import DistanceReducer
from mechbench.analyses.waad_fai.rows import (
    ANALYSIS,
    COLUMNS,
    COUPLING_ENTROPY,
    COUPLING_FAI_COOCCURRENCE,
    COUPLING_METRICS,
    COUPLING_PREFIX,
    COUPLING_WAAD_FAI,
    ENTROPY,
    FAI,
    HEAD_SPAN,
    RECEIVER_SCORE,
    RESPONSE_LENGTH,
    WAAD,
    _series_rows,
    coupling_statistics,
    head_rows,
    response_length_rows,
)
from mechbench.analyses.waad_fai.runner import (
    generate_transcripts,
    record_distance,
    run_distance,
    run_distance_from_config,
    select_layers,
    transcript_dataset,
)

__all__ = [
    "ANALYSIS",
    "COLUMNS",
    "COUPLING_ENTROPY",
    "COUPLING_FAI_COOCCURRENCE",
    "COUPLING_METRICS",
    "COUPLING_PREFIX",
    "COUPLING_WAAD_FAI",
    "ENTROPY",
    "FAI",
    "HEAD_SPAN",
    "RECEIVER_SCORE",
    "RESPONSE_LENGTH",
    "SPEC",
    "WAAD",
    "DistanceConfig",
    "DistanceReducer",
    "Head",
    "_group_mean",
    "_response_rows",
    "_series_rows",
    "check_config",
    "coupling_statistics",
    "fai",
    "fai_from_mass",
    "find_peaks",
    "future_attention_mass",
    "generate_transcripts",
    "head_rows",
    "head_spans",
    "horizon_sizes",
    "kurtosis",
    "lag_weighted_sum",
    "near",
    "next_token_entropy",
    "random_positions",
    "record_distance",
    "response_length_rows",
    "run_distance",
    "run_distance_from_config",
    "select_layers",
    "split_heads",
    "transcript_dataset",
    "waad",
    "windowed_distance",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="local vs global heads by attention span; WAAD and FAI along a reasoning response, their peaks "
                "and how they couple",
    citation="Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables "
             "Fine-Grained Policy Optimization (arXiv 2510.13554)",
    config_model=DistanceConfig,
    run=run_distance_from_config,
    headline_metrics=(HEAD_SPAN,),
    check=check_config,
    figures="mechbench.analyses.waad_fai.figures",
    columns=COLUMNS,
    aliases=("distance",),
)
