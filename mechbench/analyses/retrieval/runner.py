"""Model-running code of the retrieval analysis: decoded trials, the masking check and the rows of a run."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses.retrieval.config import MAX_NEW_TOKENS, MaskingConfig, RetrievalConfig, check_config
from mechbench.analyses.retrieval.metrics import (
    TrialResult,
    check_span,
    random_heads,
    retrieval_scores,
    rouge1_recall,
    trial_head_scores,
)
from mechbench.analyses.retrieval.rows import ANALYSIS, COLUMNS, MaskingOutcome, detection_rows, masking_rows
from mechbench.core.decoding import greedy_decode
from mechbench.core.hooked import HookedModel
from mechbench.core.interventions import mask_heads_hooks
from mechbench.core.recorder import AttentionPath
from mechbench.core.tidy import finish_rows
from mechbench.errors import ConfigError, DatasetError
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import NiahTrial, build_trials, grid, load_haystack, load_needles, stop_ids


def run_trial(model: HookedModel, trial: NiahTrial, max_new_tokens: int = MAX_NEW_TOKENS,
              stop: Collection[int] = (), use_kv_cache: bool = True,
              fwd_hooks: Sequence[tuple[str, Any]] = (), attention: AttentionPath = "auto") -> TrialResult:
    """Decode one trial and score every head (``trial_head_scores``) and the response (``rouge1_recall``).

    The response is the decoded text without special tokens, stripped (reference ``evaluate_and_log``);
    a model without a tokenizer answers with its token ids joined by spaces. ``fwd_hooks`` are active
    throughout (head masking).
    """
    check_span(trial.answer_span, trial.prompt_ids.numel())
    decoding = greedy_decode(model, trial.prompt_ids, max_new_tokens, stop, use_kv_cache, fwd_hooks, attention)
    ids = decoding.generated.tolist()
    if model.tokenizer is not None:
        response = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
    else:
        response = " ".join(str(i) for i in ids)
    scores = trial_head_scores(decoding.argmax_keys, decoding.generated, trial.prompt_ids, trial.answer_span)
    return TrialResult(trial=trial, response=response, rouge_recall=rouge1_recall(trial.answer, response),
                       head_scores=scores, decoding=decoding)


def run_trials(model: HookedModel, trials: Sequence[NiahTrial], *, max_new_tokens: int = MAX_NEW_TOKENS,
               stop: Collection[int] = (), use_kv_cache: bool = True, fwd_hooks: Sequence[tuple[str, Any]] = (),
               progress: bool = True, desc: str = "retrieval trials",
               attention: AttentionPath = "auto") -> list[TrialResult]:
    """:func:`run_trial` for every trial, with a progress bar."""
    if not trials:
        raise DatasetError("no needle-in-a-haystack trials; give at least one needle, length and depth")
    return [run_trial(model, trial, max_new_tokens, stop, use_kv_cache, fwd_hooks, attention)
            for trial in tqdm(trials, desc=desc, disable=not progress, unit="trial", leave=False)]


def run_retrieval(model: HookedModel, trials: Sequence[NiahTrial], *, max_new_tokens: int = MAX_NEW_TOKENS,
                  stop: Collection[int] = (), use_kv_cache: bool = True, masking: MaskingConfig | None = None,
                  generator: torch.Generator | None = None, progress: bool = True,
                  attention: AttentionPath = "auto") -> pd.DataFrame:
    """Detection rows (:func:`detection_rows`) and, with ``masking``, the masking curve on the same trials
    (:func:`masking_experiment`, heads ranked by the scores just measured)."""
    results = run_trials(model, trials, max_new_tokens=max_new_tokens, stop=stop, use_kv_cache=use_kv_cache,
                         progress=progress, attention=attention)
    frames = [detection_rows(results)]
    if masking is not None:
        scores = retrieval_scores(torch.stack([r.head_scores for r in results]),
                                  torch.tensor([r.success for r in results]))
        frames.append(masking_experiment(model, trials, scores, masking.top_k, n_random=masking.n_random,
                                         exclude_top=masking.exclude_top, generator=generator, baseline=results,
                                         max_new_tokens=max_new_tokens, stop=stop, use_kv_cache=use_kv_cache,
                                         progress=progress))
    return finish_rows(pd.concat(frames, ignore_index=True), ANALYSIS, model.name, COLUMNS)


def masking_experiment(model: HookedModel, trials: Sequence[NiahTrial], scores: Tensor, top_k: Sequence[int], *,
                       n_random: int = 3, exclude_top: int = 100, generator: torch.Generator | None = None,
                       baseline: Sequence[TrialResult] | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                       stop: Collection[int] = (), use_kv_cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """Wu et al.'s causal check: NIAH accuracy with the top-K retrieval heads masked vs K random heads.

    Masking gives a head uniform attention over its visible keys in the prefill and every decode step
    (:func:`mechbench.core.interventions.mask_heads_hooks`). Conditions: ``none`` (from ``baseline``,
    the unmasked results of the same trials, when given), ``top`` (the ``k`` best heads by ``scores``)
    and ``random`` (``n_random`` draws of ``k`` heads outside the top ``exclude_top``, see
    :func:`random_heads`). Rows per condition, k and draw: ``masking_success_rate`` (share of trials
    with ROUGE-1 recall > 0.5) and ``masking_rouge1_recall`` (mean), with ``masked_heads``
    ("layer.head" list) and ``n_trials``.
    """
    conditions: list[tuple[str, int, int, list[tuple[int, int]]]] = []
    for k in top_k:
        conditions.append(("top", k, 0, ranked_heads(scores)[:k]))
        conditions.extend(("random", k, draw, random_heads(scores, k, exclude_top, generator))
                          for draw in range(n_random))
    outcomes: list[MaskingOutcome] = [("none", 0, 0, [], list(baseline))] if baseline is not None else []
    for condition, k, draw, heads in tqdm(conditions, desc="masking", disable=not progress, unit="condition",
                                          leave=False):
        results = run_trials(model, trials, max_new_tokens=max_new_tokens, stop=stop, use_kv_cache=use_kv_cache,
                             fwd_hooks=mask_heads_hooks(model, heads), progress=False)
        outcomes.append((condition, k, draw, heads, results))
    return masking_rows(outcomes)


def run_retrieval_from_config(model: HookedModel, config: RetrievalConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: build the NIAH grid and call :func:`run_retrieval`."""
    check_config(config)
    if config.masking is not None:  # fail before the detection trials, not after them
        n_heads = model.n_layers * model.n_heads
        largest = max(config.masking.top_k)
        if n_heads - config.masking.exclude_top < largest:
            raise ConfigError(f"retrieval.masking: {model.name} has {n_heads} heads, so only "
                              f"{max(n_heads - config.masking.exclude_top, 0)} lie outside the top "
                              f"{config.masking.exclude_top}, fewer than top_k {largest}; lower masking.exclude_top "
                              "or masking.top_k")
    lengths, depths = grid(config.min_length, config.max_length, config.n_lengths, config.n_depths)
    trials = build_trials(model, load_needles(config.needles), load_haystack(config.haystack), lengths, depths,
                          buffer=config.buffer, template=config.template, max_new_tokens=config.max_new_tokens)
    return run_retrieval(model, trials, max_new_tokens=config.max_new_tokens, stop=stop_ids(model),
                         use_kv_cache=config.use_kv_cache, masking=config.masking, progress=progress,
                         attention=config.attention)
