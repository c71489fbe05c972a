"""TAPPA: query self-similarity, predictable vs unpredictable attention patterns, and what they buy.

Yang et al. 2026, "Why Attention Patterns Exist: A Unifying Temporal Perspective Analysis" (ICLR 2026,
arXiv 2601.21709; code ``MIRALab-USTC/LLM-TAPPA`` at ``78effb7``). Definitions and every choice the
paper leaves open are in ``docs/metrics/tappa.md``; items marked [INFERRED] are mechbench's.

* q-similarity (``KVCache/tappa/tappa_qsim.py::compute_q_sim_torch``): for one head's queries
  ``q_1..q_T`` (a window), the mean off-diagonal pairwise similarity
  ``q_sim = 1/(T(T-1)) sum_{i != j} sim(q_i, q_j)`` (cosine by default), then the mean over heads for
  a layer score. Two reference variants: ``kv`` (last ``T = 32`` prompt tokens, queries *after* RoPE,
  ``KVCache/tappa/model/llama_forward.py``) and ``prune`` (windows of ``1024`` tokens with stride
  ``256``, queries *before* RoPE from the ``q_proj`` output, ``Prune/prune/model_utils.py``).
  For cosine (and dot, Pearson) the mean needs no ``T x T`` matrix:
  ``sum_{i != j} qhat_i . qhat_j = ||sum_i qhat_i||^2 - sum_i ||qhat_i||^2``.
* Pattern types per head [INFERRED criteria, the paper gives none]: :func:`pattern_scores`.
* RoPE view [INFERRED measure]: :func:`rope_band_advantage` splits ``q . k`` by rotary frequency band.
* Downstream: layer KV budgets ``∝ 1 - q_sim`` (:func:`layer_budgets`) with SnapKV/CAKE-style eviction
  (:func:`eviction_keep`), and layer pruning by ``BI_norm + beta (1 - q_norm)``
  (:func:`tappa_prune_scores`, ``Prune/prune/orders.py::build_tappa_scores``) versus ShortGPT's Block
  Influence (:func:`block_influence`, ``Prune/prune/metrics.py``), each scored by next-token loss.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.tappa.config import TappaConfig, check_config
from mechbench.analyses.tappa.metrics import (
    DISTANCE_MODES,
    EPS,
    MODES,
    PATTERN_TYPES,
    BandAccumulator,
    Mode,
    PatternAccumulator,
    PatternCriteria,
    _best_period,
    _kl_probs,
    _mean_key_term,
    _pairwise,
    apply_rope,
    band_channels,
    band_slices,
    block_influence,
    classify_patterns,
    eviction_keep,
    layer_budgets,
    min_max,
    pattern_scores,
    predictability,
    q_similarity,
    rope_band_advantage,
    rope_frequencies,
    rope_pairs,
    similarity_matrix,
    tappa_prune_scores,
    window_bounds,
)
from mechbench.analyses.tappa.reducers import PruneReducer, TappaReducer
from mechbench.analyses.tappa.rows import (
    ANALYSIS,
    BLOCK_INFLUENCE,
    COLUMNS,
    KV_BUDGET,
    KV_EVICTION_NLL,
    PATTERN_PERIOD,
    PREDICTABILITY,
    PRUNE_NLL,
    PRUNE_SCORE,
    Q_SIMILARITY,
    Q_SIMILARITY_PRUNE,
    QSIM_SPEARMAN,
    ROPE_BAND_ADVANTAGE,
    ROPE_BAND_SHARE,
    band_rows,
    pattern_rows,
    qsim_rows,
)
from mechbench.analyses.tappa.runner import (
    _subset,
    eviction_edit,
    kv_budget_rows,
    pattern_criteria,
    prune_rows,
    record_main,
    record_prune,
    run_tappa,
    run_tappa_from_config,
    split_heldout,
    text_dataset,
    window_dataset,
)

__all__ = [
    "ANALYSIS",
    "BLOCK_INFLUENCE",
    "COLUMNS",
    "DISTANCE_MODES",
    "EPS",
    "KV_BUDGET",
    "KV_EVICTION_NLL",
    "MODES",
    "PATTERN_PERIOD",
    "PATTERN_TYPES",
    "PREDICTABILITY",
    "PRUNE_NLL",
    "PRUNE_SCORE",
    "QSIM_SPEARMAN",
    "Q_SIMILARITY",
    "Q_SIMILARITY_PRUNE",
    "ROPE_BAND_ADVANTAGE",
    "ROPE_BAND_SHARE",
    "SPEC",
    "BandAccumulator",
    "Mode",
    "PatternAccumulator",
    "PatternCriteria",
    "PruneReducer",
    "TappaConfig",
    "TappaReducer",
    "_best_period",
    "_kl_probs",
    "_mean_key_term",
    "_pairwise",
    "_subset",
    "apply_rope",
    "band_channels",
    "band_rows",
    "band_slices",
    "block_influence",
    "check_config",
    "classify_patterns",
    "eviction_edit",
    "eviction_keep",
    "kv_budget_rows",
    "layer_budgets",
    "min_max",
    "pattern_criteria",
    "pattern_rows",
    "pattern_scores",
    "predictability",
    "prune_rows",
    "q_similarity",
    "qsim_rows",
    "record_main",
    "record_prune",
    "rope_band_advantage",
    "rope_frequencies",
    "rope_pairs",
    "run_tappa",
    "run_tappa_from_config",
    "similarity_matrix",
    "split_heldout",
    "tappa_prune_scores",
    "text_dataset",
    "window_bounds",
    "window_dataset",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="TAPPA query self-similarity per head and layer, pattern types and their relation to it, RoPE "
                "frequency bands, and q-sim-driven KV budgets and layer pruning scored by loss",
    citation="Yang et al. 2026, Why Attention Patterns Exist: A Unifying Temporal Perspective Analysis "
             "(ICLR 2026, arXiv 2601.21709)",
    config_model=TappaConfig,
    run=run_tappa_from_config,
    headline_metrics=(Q_SIMILARITY,),
    check=check_config,
    figures="mechbench.analyses.tappa.figures",
    columns=COLUMNS,
    text_sharded=True,
    context_length_options=lambda length: {"max_tokens": length},
)
