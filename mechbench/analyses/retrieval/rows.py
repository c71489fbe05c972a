"""Tidy rows of the retrieval analysis, and its metric names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from mechbench.analyses.retrieval.metrics import TrialResult, retrieval_scores
from mechbench.core.tidy import ExtraColumns, to_tidy

ANALYSIS = "retrieval"
#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=("n_trials", "context_length", "depth", "k", "draw"), booleans=("success",))
RETRIEVAL_SCORE = "retrieval_score"
TRIAL_RETRIEVAL_SCORE = "trial_retrieval_score"
NIAH_SUCCESS = "niah_success"
ROUGE1_RECALL = "rouge1_recall"
MASKING_SUCCESS_RATE = "masking_success_rate"
MASKING_ROUGE1_RECALL = "masking_rouge1_recall"
#: One masking condition's outcome: condition, k, draw, the masked ``(layer, head)``s and the trials' results.
MaskingOutcome = tuple[str, int, int, Sequence[tuple[int, int]], Sequence[TrialResult]]


def detection_rows(results: Sequence[TrialResult]) -> pd.DataFrame:
    """Tidy rows of the detection trials.

    Rows: ``retrieval_score`` per (layer, head) with ``n_trials`` = number of counted trials (value NaN
    when none counts); per trial (``example`` = trial id, with ``context_length``, ``depth``, ``needle``,
    ``success``): ``niah_success`` (1/0), ``rouge1_recall`` and ``trial_retrieval_score`` per head (the
    reference's per-trial list, so runs can be pooled like its ``head_score/<model>.json``).
    """
    per_trial = torch.stack([r.head_scores for r in results])
    counted = torch.tensor([r.success for r in results])
    heads = to_tidy(retrieval_scores(per_trial, counted), ("layer", "head"), drop_nan=False,
                    metric=RETRIEVAL_SCORE, n_trials=int(counted.sum()))
    ids = [r.trial.id for r in results]
    trial_heads = to_tidy(per_trial, ("example", "layer", "head"), coords={"example": ids},
                          metric=TRIAL_RETRIEVAL_SCORE)
    outcome = pd.DataFrame([{"example": r.trial.id, "metric": metric, "value": value}
                            for r in results
                            for metric, value in ((NIAH_SUCCESS, float(r.success)),
                                                  (ROUGE1_RECALL, r.rouge_recall))])
    info = pd.DataFrame({"example": ids,
                         "context_length": [r.trial.context_length for r in results],
                         "depth": [r.trial.depth for r in results],
                         "needle": [r.trial.needle_id for r in results],
                         "success": [r.success for r in results]})
    per_trial_rows = pd.concat([trial_heads, outcome], ignore_index=True).merge(info, on="example", how="left")
    return pd.concat([heads, per_trial_rows], ignore_index=True)


def masking_rows(outcomes: Sequence[MaskingOutcome]) -> pd.DataFrame:
    """Rows per masking condition, k and draw (:func:`~mechbench.analyses.retrieval.masking_experiment`)."""
    rows = []
    for condition, k, draw, heads, results in outcomes:
        common = {"condition": condition, "k": k, "draw": draw, "n_trials": len(results),
                  "masked_heads": ",".join(f"{layer}.{head}" for layer, head in heads)}
        rows.append(common | {"metric": MASKING_SUCCESS_RATE,
                              "value": sum(r.success for r in results) / len(results)})
        rows.append(common | {"metric": MASKING_ROUGE1_RECALL,
                              "value": sum(r.rouge_recall for r in results) / len(results)})
    return pd.DataFrame(rows)
