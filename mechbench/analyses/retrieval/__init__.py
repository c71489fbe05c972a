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

import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import StrictModel
from mechbench.core.decoding import Decoding, greedy_decode
from mechbench.core.hooked import HookedModel
from mechbench.core.interventions import mask_heads_hooks
from mechbench.core.porter import porter_stem
from mechbench.core.recorder import AttentionPath
from mechbench.core.tidy import to_tidy
from mechbench.errors import ConfigError, DatasetError
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import (
    ANSWER_BUFFER,
    BUILTIN,
    NiahTrial,
    build_trials,
    grid,
    load_haystack,
    load_needles,
    stop_ids,
)

ANALYSIS = "retrieval"
#: Reference success threshold on ROUGE-1 recall (``score > 50`` on a 0..100 scale).
ROUGE_THRESHOLD = 0.5
#: Reference decode length (``self.decode(q_outputs, ..., 50)``).
MAX_NEW_TOKENS = 50


def rouge1_recall(reference: str, prediction: str, stem: bool = True) -> float:
    """ROUGE-1 recall: share of the reference's words (with multiplicity) that the prediction contains.

    Tokenisation as ``rouge_score`` (the package the reference calls with ``use_stemmer=True``):
    lower-case, non-alphanumerics to spaces, split, and Porter-stem every word longer than 3
    characters. rouge_score's stemmer is NLTK's ``PorterStemmer`` in ``NLTK_EXTENSIONS`` mode,
    reimplemented in :func:`mechbench.core.porter.porter_stem` and checked against NLTK on 170,944
    words (0 differences; ``benchmarks/make_porter_fixture.py``). ``stem=False`` compares the words
    unstemmed. Returns 0 for an empty reference.
    """
    ref = Counter(_rouge_words(reference, stem))
    if not ref:
        return 0.0
    pred = Counter(_rouge_words(prediction, stem))
    return sum(min(n, pred[w]) for w, n in ref.items()) / sum(ref.values())


def _rouge_words(text: str, stem: bool) -> list[str]:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    if not stem:
        return words
    return [porter_stem(word) if len(word) > 3 else word for word in words]


def check_span(span: tuple[int, int], prompt_length: int) -> None:
    """Raise DatasetError unless ``span`` is a non-empty token range inside the prompt."""
    start, end = span
    if not 0 <= start < end <= prompt_length:
        raise DatasetError(f"answer span [{start}, {end}) is not a non-empty range inside the {prompt_length}-token "
                           "prompt; the answer must be found in the tokenized prompt")


def copy_events(argmax_keys: Tensor, generated: Tensor, prompt_ids: Tensor, span: tuple[int, int]) -> Tensor:
    """Copy-paste events ``[step, layer, head]`` (bool) of Wu et al. 2024.

    ``argmax_keys``: ``[step, layer, head]`` argmax-attended key position of the last query at each
    decode step; ``generated``: ``[step]`` token emitted at that step; ``span``: ``[start, end)``
    token positions of the needle's answer in ``prompt_ids``. Event: ``start <= j < end`` and
    ``prompt_ids[j] == generated[step]`` (``retrieval_calculate``, top-1).
    """
    check_span(span, prompt_ids.numel())
    start, end = span
    in_span = (argmax_keys >= start) & (argmax_keys < end)
    attended = prompt_ids.to(argmax_keys.device)[argmax_keys.clamp(0, prompt_ids.numel() - 1)]
    return in_span & (attended == generated.to(argmax_keys.device)[:, None, None])


def trial_head_scores(argmax_keys: Tensor, generated: Tensor, prompt_ids: Tensor, span: tuple[int, int]) -> Tensor:
    """Per-trial score ``r[l, h] = (#copy events of head l.h) / (end - start)``, float64 ``[layer, head]``."""
    events = copy_events(argmax_keys, generated, prompt_ids, span)
    return events.sum(0).double() / (span[1] - span[0])


def retrieval_scores(trial_scores: Tensor, counted: Tensor) -> Tensor:
    """Retrieval score per head: mean of ``trial_scores[n, l, h]`` over the trials with ``counted[n]``.

    Uncounted trials (ROUGE-1 recall <= 0.5) are excluded, as in the reference. NaN everywhere when
    no trial counts. Returns ``[layer, head]`` float64.
    """
    kept = trial_scores[counted.bool()].double()
    if kept.shape[0] == 0:
        return torch.full(trial_scores.shape[1:], float("nan"), dtype=torch.float64)
    return kept.mean(0)


@dataclass(frozen=True)
class TrialResult:
    """Outcome of one needle-in-a-haystack trial."""

    trial: NiahTrial
    response: str
    rouge_recall: float
    head_scores: Tensor  # [layer, head] per-trial score r
    decoding: Decoding

    @property
    def success(self) -> bool:
        """The reference's criterion: ROUGE-1 recall of the answer in the response > 0.5."""
        return self.rouge_recall > ROUGE_THRESHOLD


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
                    metric="retrieval_score", n_trials=int(counted.sum()))
    ids = [r.trial.id for r in results]
    trial_heads = to_tidy(per_trial, ("example", "layer", "head"), coords={"example": ids},
                          metric="trial_retrieval_score")
    outcome = pd.DataFrame([{"example": r.trial.id, "metric": metric, "value": value}
                            for r in results
                            for metric, value in (("niah_success", float(r.success)),
                                                  ("rouge1_recall", r.rouge_recall))])
    info = pd.DataFrame({"example": ids,
                         "context_length": [r.trial.context_length for r in results],
                         "depth": [r.trial.depth for r in results],
                         "needle": [r.trial.needle_id for r in results],
                         "success": [r.success for r in results]})
    per_trial_rows = pd.concat([trial_heads, outcome], ignore_index=True).merge(info, on="example", how="left")
    return pd.concat([heads, per_trial_rows], ignore_index=True)


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
    frame = pd.concat(frames, ignore_index=True)
    for column in ("layer", "head", "n_trials", "context_length", "depth", "k", "draw"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    frame["success"] = frame["success"].astype("boolean")
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


def random_heads(scores: Tensor, k: int, exclude_top: int, generator: torch.Generator | None = None,
                 ) -> list[tuple[int, int]]:
    """``k`` heads drawn without replacement from those outside the top ``exclude_top`` by score.

    The reference masks ``|K|`` random heads "not among the top-100" (``--mask_top`` with ``K < 0``).
    """
    pool = ranked_heads(scores)[exclude_top:]
    if len(pool) < k:
        raise ConfigError(f"retrieval.masking: only {len(pool)} heads lie outside the top {exclude_top}, fewer than "
                          f"k={k}; lower masking.exclude_top or the largest masking.top_k")
    picks = torch.randperm(len(pool), generator=generator)[:k].tolist()
    return sorted(pool[i] for i in picks)


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
    outcomes = [("none", 0, 0, [], list(baseline))] if baseline is not None else []
    for condition, k, draw, heads in tqdm(conditions, desc="masking", disable=not progress, unit="condition",
                                          leave=False):
        results = run_trials(model, trials, max_new_tokens=max_new_tokens, stop=stop, use_kv_cache=use_kv_cache,
                             fwd_hooks=mask_heads_hooks(model, heads), progress=False)
        outcomes.append((condition, k, draw, heads, results))
    rows = []
    for condition, k, draw, heads, results in outcomes:
        common = {"condition": condition, "k": k, "draw": draw, "n_trials": len(results),
                  "masked_heads": ",".join(f"{layer}.{head}" for layer, head in heads)}
        rows.append(common | {"metric": "masking_success_rate",
                              "value": sum(r.success for r in results) / len(results)})
        rows.append(common | {"metric": "masking_rouge1_recall",
                              "value": sum(r.rouge_recall for r in results) / len(results)})
    return pd.DataFrame(rows)


class MaskingConfig(StrictModel):
    """The masking check (config block ``analyses.retrieval.masking``)."""

    top_k: list[PositiveInt] = Field([5, 10, 20], min_length=1, description="numbers of heads to mask")
    n_random: NonNegativeInt = Field(3, description="random draws of k heads per k (reference: one)")
    exclude_top: NonNegativeInt = Field(100, description="random heads come from outside the top N (reference: 100)")


class RetrievalConfig(StrictModel):
    """Options of the ``retrieval`` analysis (config block ``analyses.retrieval``)."""

    needles: str = Field(BUILTIN, description="'builtin', or a .jsonl file of {needle, question, answer} lines "
                         "(the answer verbatim inside the needle)")
    haystack: str = Field(BUILTIN, description="'builtin', or a plain-text file (repeated when too short)")
    min_length: PositiveInt = Field(500, description="shortest context in tokens (reference --s)")
    max_length: PositiveInt = Field(2000, description="longest context in tokens (reference --e)")
    n_lengths: PositiveInt = Field(4, description="context lengths: round(linspace(min, max, n)) (reference: 20)")
    n_depths: PositiveInt = Field(5, description="needle depths: round(linspace(0, 100, n)) percent (reference: 10)")
    buffer: NonNegativeInt = Field(ANSWER_BUFFER, description="tokens reserved for template, question and answer")
    template: Literal["auto", "base", "chat"] = Field(
        "auto", description="prompt template; auto = chat when the tokenizer has a chat template")
    max_new_tokens: PositiveInt = Field(MAX_NEW_TOKENS, description="decode length (reference: 50)")
    use_kv_cache: bool = Field(True, description="decode with the KV cache when the model supports it")
    attention: AttentionPath = Field(
        "auto", description="detection trials: auto = fused kernel where the model allows it (argmax keys from "
        "q . k, no pattern), else eager hook_pattern; fused | eager. Masked trials always run eager")
    masking: MaskingConfig | None = Field(None, description="also mask the top-K vs K random heads and "
                                          "measure NIAH accuracy on the same trials")


def check_config(config: RetrievalConfig) -> None:
    """Fail before any model is loaded on a bad needle or haystack file or an empty length range."""
    load_needles(config.needles)
    load_haystack(config.haystack)
    if config.min_length > config.max_length:
        raise ConfigError(f"retrieval.min_length ({config.min_length}) is above retrieval.max_length "
                          f"({config.max_length}); swap them")


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


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="retrieval-head scores per head from needle-in-a-haystack copy-paste events",
    citation="Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality (arXiv 2404.15574)",
    config_model=RetrievalConfig,
    run=run_retrieval_from_config,
    headline_metrics=("retrieval_score",),
    check=check_config,
    figures="mechbench.analyses.retrieval.figures",
    context_length_options=lambda length: {"min_length": length, "max_length": length, "n_lengths": 1},
)
