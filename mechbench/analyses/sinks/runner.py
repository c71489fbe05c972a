"""Model-running code of the sinks analysis: the sink-score pass, ACT calibration and StreamingLLM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.core.dataset import TokenDataset
from mechbench.core.hooked import HookedModel
from mechbench.core.interventions import (
    PatternEdit,
    calibrate_attention,
    renormalise_to_keys,
    start_recent_keys,
    text_nll,
)
from mechbench.core.limits import check_heads, check_layers
from mechbench.core.recorder import ATTENTION, AttentionPath, Batch, Recorder
from mechbench.core.tidy import finish_rows, to_tidy
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.classification import ClassificationTask, accuracy, label_logprobs, load_classification
from mechbench.tasks.texts import load_texts

from .config import CalibrationConfig, SinksConfig
from .metrics import _mean_margin, hidden_sinks, sink_scores
from .reducers import MassiveActivationReducer, SinkScoreReducer
from .rows import (
    ACT_ACCURACY,
    ACT_SEARCH_DELTA,
    ACT_TEXT_NLL,
    ANALYSIS,
    COLUMNS,
    STREAMING_NLL,
    STREAMING_TOKEN_NLL,
    MassiveCriteria,
    _hidden_sink_rows,
    _massive_rows,
    _score_rows,
)


def run_sinks(model: HookedModel, texts: Sequence[str], *, max_tokens: int = 64, epsilon: float = 0.3,
              hidden_threshold: float = 0.1, hidden_min_queries: int = 1,
              massive: MassiveCriteria | None = MassiveCriteria(), batch_size: int = 4,  # noqa: B008 (frozen)
              prepend_bos: bool | None = None, example_ids: Sequence[str] | None = None,
              progress: bool = True, attention: AttentionPath = "auto") -> pd.DataFrame:
    """Record sink scores (and residual magnitudes) of every head on ``texts``; return tidy rows.

    Each text is tokenised and truncated to its first ``max_tokens`` tokens (Gu et al. use 64).
    Rows: ``sink_score`` per (example, layer, head, position) with the ``token`` text,
    ``sink_score_mean`` over examples (``example`` null), ``sink_rate`` per position (percent of
    example x layer x head with score > ``epsilon``; ``layer``/``head`` null); hidden sinks
    (``hidden_sink``, ``hidden_sink_count`` per head, ``hidden_sink_token`` per token text with
    ``n_examples`` / ``n_heads``); with ``massive``, ``massive_activation`` (top-k of ``|h|`` per
    example and layer, with ``channel``, ``ratio`` to the median, ``is_massive`` and
    ``n_sink_heads``: heads whose sink score at that token exceeds ``hidden_threshold``) and
    ``resid_abs_median``.
    """
    dataset = model.tokenize_dataset(texts, max_tokens=max_tokens, prepend_bos=prepend_bos,
                                     example_ids=example_ids)
    reducer = SinkScoreReducer(len(dataset), model.n_layers, model.n_heads, dataset.max_length, model.causal)
    reducers: dict[str, Any] = {ATTENTION: reducer}
    if massive is not None:
        reducers["resid_post"] = MassiveActivationReducer(len(dataset), model.n_layers, massive.top_k)
    Recorder(model, batch_size=batch_size, progress=progress).run(dataset, reducers, description="sink scores",
                                                                  attention=attention)
    scores = reducer.scores
    ids = dataset.example_ids
    parts = _score_rows(scores, ids, dataset.token_texts, epsilon)
    hidden = _hidden_sink_rows(scores, hidden_sinks(scores, hidden_threshold, hidden_min_queries), ids,
                               dataset.token_texts)
    parts.append(hidden.assign(threshold=hidden_threshold))
    if massive is not None:
        sink_heads = (scores > hidden_threshold).sum((1, 2))  # [example, position]
        parts.append(_massive_rows(reducers["resid_post"], massive, sink_heads, ids, dataset.token_texts))
    return finish_rows(pd.concat(parts, ignore_index=True), ANALYSIS, model.name, COLUMNS)


# ---------------------------------------------------------------------------- ACT calibration
def act_edits(heads: Sequence[tuple[int, int]], *, beta: float = 0.4, threshold: float = 0.1,
              causal: bool = True) -> dict[int, PatternEdit]:
    """Pattern edits applying ACT calibration to ``heads`` ((layer, head) pairs) in one forward pass.

    Per input and head, the sinks are detected on the pattern itself (:func:`hidden_sinks` with
    ``threshold``, first sink kept), then :func:`calibrate_attention` scales them by ``beta``.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def edit_for(chosen: list[int]) -> PatternEdit:
        def edit(pattern: Tensor, batch: Batch) -> Tensor:
            selected = pattern[:, chosen]
            sinks = hidden_sinks(sink_scores(selected, batch.lengths, causal=causal), threshold)
            edited = pattern.clone()
            edited[:, chosen] = calibrate_attention(selected, sinks.to(pattern.device), beta)
            return edited
        return edit

    return {layer: edit_for(sorted(chosen)) for layer, chosen in sorted(by_layer.items())}


def default_calibration_layers(n_layers: int) -> list[int]:
    """ACT's candidate layers: all but the first two and the last (``range(2, 31)`` for 32 layers)."""
    return list(range(2, n_layers - 1))


def search_calibration_heads(model: HookedModel, task: ClassificationTask,
                             candidates: Sequence[tuple[int, int]], *, beta: float = 0.4, threshold: float = 0.1,
                             batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """ACT's head search: calibrate each candidate head alone and keep those that raise task accuracy.

    Returns one row per candidate with ``accuracy`` (calibration set, that head calibrated),
    ``delta`` (versus no calibration), ``margin_delta`` (change of the mean gold-minus-best-other
    log-prob, a finer signal reported alongside) and ``selected`` (``delta > 0``, the reference's rule).
    """
    baseline = label_logprobs(model, task, batch_size)
    base_accuracy, base_margin = accuracy(baseline, task.gold), _mean_margin(baseline, task.gold)
    rows = []
    for layer, head in tqdm(candidates, desc="ACT head search", disable=not progress, unit="head", leave=False):
        logprobs = label_logprobs(model, task, batch_size,
                                  act_edits([(layer, head)], beta=beta, threshold=threshold, causal=model.causal))
        head_accuracy = accuracy(logprobs, task.gold)
        rows.append({"layer": layer, "head": head, "accuracy": head_accuracy, "delta": head_accuracy - base_accuracy,
                     "margin_delta": _mean_margin(logprobs, task.gold) - base_margin})
    frame = pd.DataFrame(rows, columns=["layer", "head", "accuracy", "delta", "margin_delta"])
    frame["selected"] = frame["delta"] > 0
    return frame


def run_calibration(model: HookedModel, task: ClassificationTask, config: CalibrationConfig,
                    texts: TokenDataset | None, progress: bool = True) -> pd.DataFrame:
    """ACT end to end: search heads on the calibration split, then evaluate on the held-out split.

    Rows: ``act_search_delta`` per candidate head (accuracy change on the calibration split; columns
    ``accuracy``, ``margin_delta``, ``selected``), ``act_accuracy`` (``split`` x ``condition``
    original/calibrated) and, with ``texts``, ``act_text_nll`` (mean next-token loss per condition).
    """
    if not model.causal:
        raise CapabilityError(f"ACT calibration is defined for causal language models; {model.name} is an encoder")
    calibration, evaluation = task.split(config.calibration_size)
    if config.heads is not None:
        check_heads("sinks.calibration.heads", config.heads, config.heads, model)
    if config.layers is not None:
        check_layers("sinks.calibration.layers", config.layers, config.layers, model.n_layers, model.name)
    if config.heads is not None:
        chosen = [(int(layer), int(head)) for layer, head in config.heads]
        search = pd.DataFrame(columns=["layer", "head", "accuracy", "delta", "margin_delta", "selected"])
    else:
        layers = config.layers if config.layers is not None else default_calibration_layers(model.n_layers)
        candidates = [(layer, head) for layer in layers for head in range(model.n_heads)]
        search = search_calibration_heads(model, calibration, candidates, beta=config.beta,
                                          threshold=config.threshold, batch_size=config.batch_size,
                                          progress=progress)
        chosen = [(int(r.layer), int(r.head)) for r in search.itertuples() if r.selected]
    edits = act_edits(chosen, beta=config.beta, threshold=config.threshold)
    rows = []
    for split, subset in (("calibration", calibration), ("evaluation", evaluation)):
        for condition, condition_edits in (("original", None), ("calibrated", edits)):
            logprobs = label_logprobs(model, subset, config.batch_size, condition_edits)
            rows.append({"metric": ACT_ACCURACY, "split": split, "condition": condition,
                         "value": accuracy(logprobs, subset.gold), "n_examples": len(subset.gold)})
    if texts is not None:
        for condition, condition_edits in (("original", None), ("calibrated", edits)):
            rows.append({"metric": ACT_TEXT_NLL, "condition": condition, "n_examples": len(texts),
                         "value": float(text_nll(model, texts, config.batch_size, condition_edits).nanmean())})
    frame = pd.DataFrame(rows)
    frame["n_heads"] = len(chosen)
    search_rows = search.rename(columns={"delta": "value"}).assign(metric=ACT_SEARCH_DELTA)
    frame = pd.concat([search_rows, frame], ignore_index=True)
    frame["beta"], frame["threshold"], frame["task"] = config.beta, config.threshold, config.task
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


# ---------------------------------------------------------------------------- StreamingLLM
def run_streaming(model: HookedModel, tokens: Tensor, *, start_size: int = 4, recent_size: int = 64,
                  token_texts: list[str] | None = None) -> pd.DataFrame:
    """Next-token loss of one long token sequence under three caches (Xiao et al. 2023).

    ``full``: ordinary causal attention. ``start+recent``: every query sees the first
    ``start_size`` tokens (the sinks) and its last ``recent_size`` tokens (StreamingLLM's
    ``StartRecentKVCache``). ``recent``: a plain window of the same size, ``start_size +
    recent_size`` tokens, with the sinks evicted. Eviction is applied as a key mask in every layer
    and head (:func:`renormalise_to_keys`), keeping each token's original position; StreamingLLM
    additionally re-assigns positions inside the cache (its ``pos_shift``), which is not done here.
    Rows ``streaming_nll`` (mean over the positions past the first window, where the caches differ)
    and ``streaming_token_nll`` (per target position), with column ``cache``.
    """
    if not model.causal:
        raise CapabilityError(f"the StreamingLLM check needs a causal language model; {model.name} is an encoder")
    length = int(tokens.numel())
    window = start_size + recent_size
    if length <= window + 1:
        raise DatasetError(f"the streaming text has {length} tokens; it needs more than start_size + recent_size "
                           f"+ 1 = {window + 1} for eviction to happen — give a longer text or a smaller window")
    dataset = TokenDataset(tokens=[tokens], example_ids=["stream"], token_texts=[token_texts or []])
    caches = {"full": None, "start+recent": start_recent_keys(length, start_size, recent_size),
              "recent": start_recent_keys(length, 0, window)}
    rows = []
    for cache, keep in caches.items():
        edits = None
        if keep is not None:
            def edit(pattern: Tensor, batch: Batch, keep: Tensor = keep) -> Tensor:
                n = pattern.shape[-1]
                return renormalise_to_keys(pattern, keep[:n, :n].to(pattern.device))
            edits = dict.fromkeys(range(model.n_layers), edit)
        nll = text_nll(model, dataset, 1, edits)[0, : length - 1]
        per_token = to_tidy(nll, ("position",), metric=STREAMING_TOKEN_NLL, cache=cache)
        per_token["position"] += 1  # the position of the predicted token
        rows.append(per_token)
        rows.append(pd.DataFrame([{"metric": STREAMING_NLL, "cache": cache, "value": float(nll[window:].mean()),
                                   "n_tokens": length - 1 - window}]))
    frame = pd.concat(rows, ignore_index=True)
    frame["start_size"], frame["recent_size"] = start_size, recent_size
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


# ---------------------------------------------------------------------------- runner
def run_sinks_from_config(model: HookedModel, config: SinksConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: sink scores, then the optional ACT calibration and StreamingLLM blocks."""
    ids, texts = load_texts(config.texts, config.limit)
    massive = MassiveCriteria(config.massive_top_k, config.massive_min_value, config.massive_min_ratio)
    parts = [run_sinks(model, texts, example_ids=ids, max_tokens=config.max_tokens, epsilon=config.epsilon,
                       hidden_threshold=config.hidden_threshold, hidden_min_queries=config.hidden_min_queries,
                       massive=massive, batch_size=config.batch_size, prepend_bos=config.prepend_bos,
                       progress=progress, attention=config.attention)]
    if config.calibration is not None:
        calibration = config.calibration
        task = load_classification(calibration.task, calibration.template, calibration.labels)
        loss_texts = (model.tokenize_dataset(texts, max_tokens=config.max_tokens, prepend_bos=config.prepend_bos,
                                             example_ids=ids) if calibration.text_loss else None)
        parts.append(run_calibration(model, task, calibration, loss_texts, progress=progress))
    if config.streaming is not None:
        streaming = config.streaming
        _, stream_texts = load_texts(streaming.texts)
        stream = model.tokenize_dataset(["\n\n".join(stream_texts)], max_tokens=streaming.max_tokens,
                                        prepend_bos=config.prepend_bos, example_ids=["stream"])
        parts.append(run_streaming(model, stream.tokens[0], start_size=streaming.start_size,
                                   recent_size=streaming.recent_size, token_texts=stream.token_texts[0]))
    return pd.concat(parts, ignore_index=True)
