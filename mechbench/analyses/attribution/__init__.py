"""Attention vs input attribution: saliency, integrated gradients, occlusion, and how far attention agrees.

A *target* is a scalar of the output for one example (``docs/metrics/attribution.md``):

* ``next_token`` / ``span``: ``f(x) = sum_i log p(y_i | x, y_<i)`` over the target tokens (one token
  for ``next_token``, the whole continuation for ``span``), read from the logits at ``p_i - 1``;
* ``logit_diff``: ``f(x) = logit_y(x) - logit_foil(x)`` at the last prompt position.

Input attribution scores each input position ``s`` (captum, Kokhlikyan et al. 2020, on the token
embeddings ``e_s`` through :mod:`mechbench.core.embeddings`):

* saliency (Simonyan et al. 2014): ``||df/de_s||_2``;
* input x gradient (Shrikumar et al. 2016): ``sum_d e_sd df/de_sd``;
* integrated gradients (Sundararajan et al. 2017): ``sum_d (e_sd - b_sd) int_0^1 df/de_sd(b + a(e - b)) da``
  with a Gauss-Legendre rule of ``ig_steps`` points (captum's default) and a baseline ``b`` (zero,
  pad-token or mean embedding at every position); the completeness error
  ``|sum_s IG_s - (f(e) - f(b))|`` is reported per example;
* occlusion (Zeiler & Fergus 2014; captum ``FeatureAblation``): ``f(x) - f(x with s replaced)``,
  the replacement being the zero, pad-token or mean embedding, or ``drop`` (the token removed and
  the sequence shortened).

Attention views of the same forward pass, over the query rows ``Q`` that read the target
(``Q = {p_i - 1}``): per head ``a_{l,h}[s] = 1/|Q| sum_{q in Q} A_{l,h}[q, s]``; per layer (mean over
heads); all layers (mean over layers); attention rollout (Abnar & Zuidema 2020):
``R_l = (A_l/2 + I/2) R_{l-1}``, ``R_0 = A_0/2 + I/2``, with ``A_l`` the head mean, read at ``Q``.

Agreement, per (example, method, view), over the prompt positions (the first one excluded by
default: it is the attention sink of most models, Xiao et al. 2023): Pearson and Spearman
correlation (``|score|`` by default) and top-k overlap; deletion / insertion curves (Petsiuk et al.
2018) over the positions ranked by a score, with a seeded random-order baseline. Pooling between
resolutions (max or mean over segments) is :func:`pool_segments` / :func:`pool_to_length`; a
comparison of a token-level map with a passage-level one uses it.

Grounding (XKD-Dial, Pandya 2026, arXiv 2603.18911; its definitions are known from the abstract
only, so the following are [INFERRED], see ``docs/metrics/attribution.md``): for a prompt with
knowledge passages and an answer drawn from passage ``c``, the share of attention mass (the views
above), of ``|attribution|`` (each gradient method) and of positive occlusion effect (each passage
replaced as a whole) that falls on passage ``c`` among all passages; the passages' share of the
passage tokens is the length baseline.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.attribution.config import (
    GRADIENT_METHODS,
    METHODS,
    VIEWS,
    AttributionConfig,
    Method,
    Replacement,
    TargetKind,
    View,
    check_config,
)
from mechbench.analyses.attribution.metrics import (
    Example,
    Forward,
    Target,
    _leaf,
    attention_rollout,
    converged_integrated_gradients,
    curve_area,
    curve_masks,
    curve_points,
    feature_positions,
    grounding_shares,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    perturbation_curve,
    query_view,
    saliency,
    target_values,
)
from mechbench.analyses.attribution.reducers import (
    AttentionViews,
    ViewReducer,
)
from mechbench.analyses.attribution.rows import (
    ANALYSIS,
    ATTENTION,
    ATTRIBUTION,
    COLUMNS,
    DELETION,
    GROUNDING_SHARE,
    IG_COMPLETENESS_ERROR,
    IG_RELATIVE_ERROR,
    INSERTION,
    INT_COLUMNS,
    PEARSON,
    SPEARMAN,
    TARGET_VALUE,
    TOPK_OVERLAP,
    _agreement_rows,
    _curve_frame,
    _grounding_frame,
    _token_rows,
    _view_items,
)
from mechbench.analyses.attribution.runner import (
    Perturber,
    _attribute_batch,
    _continuation_ids,
    _curve_rows,
    _grounding_rows,
    _perturber,
    _pieces,
    build_example,
    drop_occlusion,
    embedding_forward,
    grounding_examples,
    prompt_examples,
    replacement_embeddings,
    run_attribution,
    run_attribution_from_config,
    sequence_targets,
)

__all__ = [
    "ANALYSIS",
    "ATTENTION",
    "ATTRIBUTION",
    "COLUMNS",
    "DELETION",
    "GRADIENT_METHODS",
    "GROUNDING_SHARE",
    "IG_COMPLETENESS_ERROR",
    "IG_RELATIVE_ERROR",
    "INSERTION",
    "INT_COLUMNS",
    "METHODS",
    "PEARSON",
    "SPEARMAN",
    "SPEC",
    "TARGET_VALUE",
    "TOPK_OVERLAP",
    "VIEWS",
    "AttentionViews",
    "AttributionConfig",
    "Example",
    "Forward",
    "Method",
    "Perturber",
    "Replacement",
    "Target",
    "TargetKind",
    "View",
    "ViewReducer",
    "_agreement_rows",
    "_attribute_batch",
    "_continuation_ids",
    "_curve_frame",
    "_curve_rows",
    "_grounding_frame",
    "_grounding_rows",
    "_leaf",
    "_perturber",
    "_pieces",
    "_token_rows",
    "_view_items",
    "attention_rollout",
    "build_example",
    "check_config",
    "converged_integrated_gradients",
    "curve_area",
    "curve_masks",
    "curve_points",
    "drop_occlusion",
    "embedding_forward",
    "feature_positions",
    "grounding_examples",
    "grounding_shares",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "perturbation_curve",
    "prompt_examples",
    "query_view",
    "replacement_embeddings",
    "run_attribution",
    "run_attribution_from_config",
    "saliency",
    "sequence_targets",
    "target_values",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="attention vs input attribution: saliency, input x gradient, integrated gradients and occlusion "
                "against per-head / per-layer / all-layer / rollout attention (correlations, top-k overlap, "
                "deletion and insertion curves), and grounding shares on cited passages",
    citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010); "
             "Pandya 2026, XKD-Dial (arXiv 2603.18911); Sundararajan et al. 2017 (integrated gradients)",
    config_model=AttributionConfig,
    run=run_attribution_from_config,
    headline_metrics=(PEARSON, GROUNDING_SHARE),
    check=check_config,
    figures="mechbench.analyses.attribution.figures",
    columns=COLUMNS,
)
