"""Retrieval heads (Wu, Wang, Xiao, Peng, Fu 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality", arXiv 2404.15574): per-head copy-paste scores on needle-in-a-haystack trials.

Definition, as in the reference code ``nightdessert/Retrieval_Head`` ``retrieval_head_detection.py``
(``decode``, ``retrieval_calculate``, ``evaluate_and_log``; see ``docs/metrics/retrieval.md``):

* Greedy decoding from the prompt. At decode step ``t`` the model reads token ``x_{t-1}`` and emits
  ``y_t = argmax logits``. For every layer ``l`` and query head ``h`` let
  ``j[t, l, h] = argmax_s A[l, h][last query, s]`` over all positions (prompt and generated; top-1).
* Copy event: ``start <= j < end`` (the needle answer's token span) and ``prompt_ids[j] == y_t``.
* Trial score: ``r[l, h] = sum_t [copy event at t] / (end - start)``. A needle token copied twice
  counts twice, so ``r`` can exceed 1 (the published Qwen1.5-14B JSON has a head with mean 1.003).
* Only trials whose response passes ``ROUGE-1 recall(answer, response) > 0.5`` are kept; the
  retrieval score of a head is the mean of ``r`` over the kept trials (failed trials are left out,
  not averaged in as zeros: ``retrieval_head_accumulate`` is only called when the score is > 50).

Streaming: a hook on ``hook_pattern`` keeps one argmax per head per step (``[heads]`` per layer);
no attention pattern is stored. The prompt is prefilled once without hooks and decoding reuses the
Hugging Face KV cache through the TransformerBridge (``return_type="logits_and_cache"``). Models
whose bridge has no HF cache (TL-native toy models) recompute the sequence each step instead.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.retrieval.config import MAX_NEW_TOKENS, MaskingConfig, RetrievalConfig, check_config
from mechbench.analyses.retrieval.metrics import (
    ROUGE_THRESHOLD,
    TrialResult,
    _rouge_words,
    check_span,
    copy_events,
    random_heads,
    retrieval_scores,
    rouge1_recall,
    trial_head_scores,
)
from mechbench.analyses.retrieval.rows import (
    ANALYSIS,
    COLUMNS,
    MASKING_ROUGE1_RECALL,
    MASKING_SUCCESS_RATE,
    NIAH_SUCCESS,
    RETRIEVAL_SCORE,
    ROUGE1_RECALL,
    TRIAL_RETRIEVAL_SCORE,
    MaskingOutcome,
    detection_rows,
    masking_rows,
)
from mechbench.analyses.retrieval.runner import (
    masking_experiment,
    run_retrieval,
    run_retrieval_from_config,
    run_trial,
    run_trials,
)
from mechbench.core.decoding import greedy_decode

__all__ = [
    "ANALYSIS",
    "COLUMNS",
    "MASKING_ROUGE1_RECALL",
    "MASKING_SUCCESS_RATE",
    "MAX_NEW_TOKENS",
    "NIAH_SUCCESS",
    "RETRIEVAL_SCORE",
    "ROUGE1_RECALL",
    "ROUGE_THRESHOLD",
    "SPEC",
    "TRIAL_RETRIEVAL_SCORE",
    "MaskingConfig",
    "MaskingOutcome",
    "RetrievalConfig",
    "TrialResult",
    "_rouge_words",
    "check_config",
    "check_span",
    "copy_events",
    "detection_rows",
    "greedy_decode",
    "masking_experiment",
    "masking_rows",
    "random_heads",
    "retrieval_scores",
    "rouge1_recall",
    "run_retrieval",
    "run_retrieval_from_config",
    "run_trial",
    "run_trials",
    "trial_head_scores",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="retrieval-head scores per head from needle-in-a-haystack copy-paste events",
    citation="Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality (arXiv 2404.15574)",
    config_model=RetrievalConfig,
    run=run_retrieval_from_config,
    headline_metrics=(RETRIEVAL_SCORE,),
    check=check_config,
    figures="mechbench.analyses.retrieval.figures",
    columns=COLUMNS,
    context_length_options=lambda length: {"min_length": length, "max_length": length, "n_lengths": 1},
)
