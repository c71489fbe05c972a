"""Attention sinks: sink scores, sink rate, hidden sinks, massive activations, ACT, StreamingLLM.

Definitions (``docs/metrics/sinks.md``):

* Sink score (Gu et al. 2024, "When Attention Sink Emerges in Language Models", arXiv 2410.10781,
  ``sail-sg/Attention-Sink`` ``eval_sink_open_source.py``; the same form is ACT's detector,
  Yu et al. 2024, ``GATECH-EIC/ACT``): the mean attention key ``k`` receives from the queries that
  can see it. For a causal pattern ``A`` of ``T`` tokens (0-indexed),
  ``alpha[l, h, k] = 1 / (T - k) * sum_{t=k}^{T-1} A[l, h, t, k]``.
  For a bidirectional (encoder) pattern every query sees every key, so the divisor is ``T``.
* Sink rate ``Sink_k^eps`` (Gu et al.): the percentage of (example, layer, head) triples with
  ``alpha[l, h, k] > eps``; the paper uses ``eps = 0.3`` on the first ``T = 64`` tokens.

* Hidden sinks (ACT, Yu et al. 2024, ``models/llama_modelling_aug.py``): per head and input, the
  positions whose sink score exceeds 0.1, minus the first such position (normally position 0).
* Massive activations (Sun et al. 2024, ``locuslab/massive-activations`` ``main_llm.py --exp2``):
  per layer, the top ``|h|`` entries of the residual stream over tokens x channels and the median
  ``|h|``; massive when ``> 100`` and ``>= 1000x`` the median.
* ACT calibration and StreamingLLM's start+recent cache: interventions on the pattern, see
  :func:`mechbench.core.interventions.calibrate_attention` and
  :func:`mechbench.core.interventions.start_recent_keys`.

The runner :func:`run_sinks` streams one layer's pattern at a time through the Recorder and keeps
only ``[heads, T]`` per layer and example, never the ``layers x heads x T x T`` cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import StrictModel
from mechbench.core.dataset import TokenDataset
from mechbench.core.fused import AttentionView, Streaming
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
from mechbench.core.tidy import to_tidy
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.classification import (
    BUILTIN_SENTIMENT,
    SENTIMENT_LABELS,
    SENTIMENT_TEMPLATE,
    ClassificationTask,
    accuracy,
    label_logprobs,
    load_classification,
)
from mechbench.tasks.texts import BUILTIN, load_texts

ANALYSIS = "sinks"


def sink_scores(pattern: Tensor, lengths: Tensor | None = None, causal: bool = True) -> Tensor:
    """Mean attention received by each key from the queries that can see it.

    ``pattern``: ``[batch, head, query, key]`` post-softmax attention. ``lengths``: real token count
    per example (right padding); positions at or past an example's length are NaN. Returns
    ``[batch, head, key]``. Formula: ``alpha[k] = sum_{t>=k, t<T} A[t, k] / (T - k)`` (causal) or
    ``sum_{t<T} A[t, k] / T`` (bidirectional), Gu et al. 2024.
    """
    batch, _, n_query, n_key = pattern.shape
    if n_query != n_key:
        raise ValueError(f"sink_scores needs a square self-attention pattern, got {n_query} queries x {n_key} keys")
    lengths = torch.full((batch,), n_key, dtype=torch.long) if lengths is None else lengths
    return scores_from_received(received_attention(pattern, 0, lengths), lengths, causal)


def received_attention(rows: Tensor, first_row: int, lengths: Tensor) -> Tensor:
    """``sum_t A[t, k]`` over the real queries ``t < T`` among pattern rows ``first_row ..``.

    ``rows``: ``[batch, head, r, key]`` (a block of the pattern, or all of it); returns ``[batch, head, key]``
    float64, summed in float32 within the block as mechbench always has (half precision is promoted: it
    would lose the small scores); summing consecutive blocks gives the sum over all rows.
    """
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    positions = torch.arange(first_row, first_row + rows.shape[-2], device=rows.device)
    real = (positions[None, :] < lengths.to(rows.device)[:, None]).to(rows.dtype)  # [batch, r]
    return (real[:, None, None, :] @ rows).squeeze(-2).double()  # a product, not a masked copy of the block


def scores_from_received(received: Tensor, lengths: Tensor, causal: bool = True) -> Tensor:
    """Sink scores ``[batch, head, key]`` from :func:`received_attention` summed over all rows."""
    batch, n_key = received.shape[0], received.shape[-1]
    lengths = lengths.to(received.device)
    positions = torch.arange(n_key, device=received.device)
    valid = positions[None, :] < lengths[:, None]  # [batch, pos]
    n_seeing = (lengths[:, None] - positions[None, :]).clamp(min=1) if causal else lengths[:, None].expand(batch, n_key)
    scores = received / n_seeing[:, None, :].double()
    return scores.masked_fill(~valid[:, None, :], float("nan"))


def sink_rate(scores: Tensor, epsilon: float = 0.3) -> Tensor:
    """``Sink_k^eps`` in percent: share of all leading entries (examples, layers, heads) with score > eps.

    ``scores``: ``[..., key]`` sink scores (NaN where a key does not exist; those entries are left out).
    Returns ``[key]`` (NaN at a position no example reaches). Gu et al. 2024 use ``eps = 0.3``.
    """
    flat = scores.reshape(-1, scores.shape[-1]).double()
    present = ~torch.isnan(flat)
    above = (flat > epsilon) & present
    rate = 100.0 * above.sum(0).double() / present.sum(0).clamp(min=1).double()
    return rate.masked_fill(present.sum(0) == 0, float("nan"))


def hidden_sinks(scores: Tensor, threshold: float = 0.1, min_queries: int = 1) -> Tensor:
    """ACT's sink set per head and input, without its first element (Yu et al. 2024).

    ``scores``: ``[..., key]`` sink scores (NaN past an example's end; the real keys are a prefix).
    ``S = {s : score[s] > threshold}`` minus its lowest position, which ACT leaves alone (normally the
    BOS/first-token sink). ``min_queries > 1`` also drops keys seen by fewer than that many queries:
    the score of the last key is its own self-attention, so local heads make the last few keys
    "sinks" under the reference rule (``min_queries = 1``). Returns a bool ``[..., key]`` mask.
    """
    above = scores > threshold  # NaN compares False
    first = above & (above.long().cumsum(-1) == 1)
    mask = above & ~first
    if min_queries > 1:
        lengths = (~torch.isnan(scores)).sum(-1, keepdim=True)
        n_seeing = lengths - torch.arange(scores.shape[-1], device=scores.device)
        mask &= n_seeing >= min_queries
    return mask


def massive_activations(resid: Tensor, top_k: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top ``|h|`` entries of one residual stream ``[pos, d_model]`` (Sun et al. 2024, exp2).

    Returns ``(values [k], positions [k], channels [k], median)``, with ``median`` the median of
    ``|h|`` over all tokens and channels (``torch.median``: the lower middle value).
    """
    magnitude = resid.abs().float()
    width = magnitude.shape[-1]
    # the top k of each position's top k: exact, and 4x faster than a top k of all entries
    per_position, channels = magnitude.topk(min(top_k, width), dim=-1)
    top = per_position.flatten().topk(min(top_k, per_position.numel()))
    positions = top.indices // per_position.shape[-1]
    chosen = channels.flatten()[top.indices]
    flat = magnitude.flatten().cpu().numpy()
    middle = (flat.size - 1) // 2  # torch.median's lower middle value, by selection (5x faster than a median)
    median = torch.tensor(np.partition(flat, middle)[middle], device=magnitude.device)
    return top.values, positions, chosen, median


@dataclass
class SinkScoreReducer:
    """Recorder ``attention`` reducer: keeps sink scores ``[example, layer, head, position]``, summing each
    layer's pattern block by block (memory: one block, never the layer's ``L x L`` per head)."""

    streaming = Streaming()  # it reads every row: the fused pass computes each row block once
    n_examples: int
    n_layers: int
    n_heads: int
    max_len: int
    causal: bool

    def __post_init__(self) -> None:
        self.scores = torch.full((self.n_examples, self.n_layers, self.n_heads, self.max_len), float("nan"),
                                 dtype=torch.float64)

    def __call__(self, layer: int, view: AttentionView, batch: Batch) -> None:
        if view.n_queries != view.n_keys:
            raise ValueError(f"sink scores need self-attention, got {view.n_queries} queries x {view.n_keys} keys")
        received = torch.zeros(view.batch_size, view.n_heads, view.n_keys, dtype=torch.float64)
        for first, rows in view.blocks(trim=True):  # a causal block's keys stop at its last row
            received[..., : rows.shape[-1]] += received_attention(rows, first, batch.lengths).cpu()
        scores = scores_from_received(received, batch.lengths, causal=self.causal)
        self.scores[batch.indices, layer, :, : scores.shape[-1]] = scores.cpu()


@dataclass
class MassiveActivationReducer:
    """Recorder reducer on ``resid_post``: top-``k`` magnitudes, their places, and the median, per layer."""

    n_examples: int
    n_layers: int
    top_k: int

    def __post_init__(self) -> None:
        shape = (self.n_examples, self.n_layers, self.top_k)
        self.values = torch.full(shape, float("nan"), dtype=torch.float64)
        self.positions = torch.full(shape, -1, dtype=torch.long)
        self.channels = torch.full(shape, -1, dtype=torch.long)
        self.medians = torch.full(shape[:2], float("nan"), dtype=torch.float64)

    def __call__(self, layer: int, resid: Tensor, batch: Batch) -> None:
        for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            values, positions, channels, median = massive_activations(resid[row, :length], self.top_k)
            k = values.numel()
            self.values[index, layer, :k] = values.double().cpu()
            self.positions[index, layer, :k] = positions.cpu()
            self.channels[index, layer, :k] = channels.cpu()
            self.medians[index, layer] = float(median)


@dataclass(frozen=True)
class MassiveCriteria:
    """Sun et al.'s working definition: magnitude above ``min_value`` and ``min_ratio`` x the median."""

    top_k: int = 3
    min_value: float = 100.0
    min_ratio: float = 1000.0


def _hidden_sink_rows(scores: Tensor, mask: Tensor, ids: list[str], token_texts: list[list[str]]) -> pd.DataFrame:
    """Rows ``hidden_sink`` (each detection), ``hidden_sink_count`` (per head) and ``hidden_sink_token``."""
    found = mask.nonzero().tolist()
    detections = pd.DataFrame({
        "example": [ids[e] for e, _, _, _ in found], "layer": [la for _, la, _, _ in found],
        "head": [h for _, _, h, _ in found], "position": [p for _, _, _, p in found],
        "value": [float(scores[e, la, h, p]) for e, la, h, p in found],
        "token": [token_texts[e][p] for e, _, _, p in found]})
    detections["metric"] = "hidden_sink"
    per_head = to_tidy(mask.double().sum(-1).mean(0), ("layer", "head"), metric="hidden_sink_count")
    if detections.empty:
        return pd.concat([detections, per_head], ignore_index=True)
    by_token = detections.assign(layer_head=list(zip(detections["layer"], detections["head"], strict=True))).groupby(
        "token", sort=False).agg(value=("value", "size"), n_examples=("example", "nunique"),
                                 n_heads=("layer_head", "nunique"))
    by_token = by_token.reset_index().sort_values(["value", "token"], ascending=[False, True])
    by_token["metric"] = "hidden_sink_token"
    by_token["value"] = by_token["value"].astype(float)
    return pd.concat([detections, per_head, by_token], ignore_index=True)


def _massive_rows(reducer: MassiveActivationReducer, criteria: MassiveCriteria, sink_heads: Tensor,
                  ids: list[str], token_texts: list[list[str]]) -> pd.DataFrame:
    """Rows ``massive_activation`` (top-k per example and layer) and ``resid_abs_median``."""
    top = to_tidy(reducer.values, ("example_index", "layer", "rank"), metric="massive_activation")
    top["example"] = [ids[i] for i in top["example_index"]]
    index = tuple(torch.tensor(top[axis].to_numpy(dtype="int64")) for axis in ("example_index", "layer", "rank"))
    positions = reducer.positions[index]
    top["position"] = positions.numpy()
    top["channel"] = reducer.channels[index].numpy()
    median = reducer.medians[index[:2]].numpy()
    value = top["value"].to_numpy()
    # a zero median (e.g. one-hot residuals) makes every nonzero entry infinitely many times the median
    top["ratio"] = np.divide(value, median, out=np.where(value > 0, np.inf, np.nan), where=median > 0)
    top["is_massive"] = (top["value"] > criteria.min_value) & (top["ratio"] >= criteria.min_ratio)
    top["token"] = [token_texts[e][p] for e, p in zip(index[0].tolist(), positions.tolist(), strict=True)]
    top["n_sink_heads"] = sink_heads[index[0], positions].numpy()
    top = top.drop(columns="example_index")
    medians = to_tidy(reducer.medians, ("example", "layer"), coords={"example": ids}, metric="resid_abs_median")
    return pd.concat([top, medians], ignore_index=True)


def run_sinks(model: HookedModel, texts: Sequence[str], *, max_tokens: int = 64, epsilon: float = 0.3,
              hidden_threshold: float = 0.1, hidden_min_queries: int = 1,
              massive: MassiveCriteria | None = MassiveCriteria(), batch_size: int = 4,
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
    per_example = to_tidy(scores, ("example", "layer", "head", "position"), coords={"example": ids},
                          metric="sink_score")
    tokens = {(ex, pos): tok for ex, toks in zip(ids, dataset.token_texts, strict=True) for pos, tok in enumerate(toks)}
    per_example["token"] = [tokens[(ex, pos)] for ex, pos in zip(per_example["example"], per_example["position"],
                                                                   strict=True)]
    mean = to_tidy(scores.nanmean(0), ("layer", "head", "position"), metric="sink_score_mean")
    examples_per_position = (~torch.isnan(scores[:, 0, 0, :])).sum(0).numpy()
    mean["n_examples"] = examples_per_position[mean["position"].to_numpy()]
    rate = to_tidy(sink_rate(scores, epsilon), ("position",), metric="sink_rate", epsilon=epsilon)
    hidden = _hidden_sink_rows(scores, hidden_sinks(scores, hidden_threshold, hidden_min_queries), ids,
                               dataset.token_texts)
    parts = [per_example, mean, rate, hidden.assign(threshold=hidden_threshold)]
    if massive is not None:
        sink_heads = (scores > hidden_threshold).sum((1, 2))  # [example, position]
        parts.append(_massive_rows(reducers["resid_post"], massive, sink_heads, ids, dataset.token_texts))
    return _finish(pd.concat(parts, ignore_index=True), model)


def _finish(frame: pd.DataFrame, model: HookedModel) -> pd.DataFrame:
    """Stamp the analysis and model on every row and give count columns a nullable integer dtype."""
    for column in ("n_examples", "n_tokens", "n_heads", "n_sink_heads", "rank", "channel"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    for column in ("is_massive", "selected"):
        if column in frame:
            frame[column] = frame[column].astype("boolean")
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


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


def _mean_margin(logprobs: Tensor, gold: list[int]) -> float:
    gold_index = torch.tensor(gold)
    gold_lp = logprobs[torch.arange(len(gold)), gold_index]
    others = logprobs.clone()
    others[torch.arange(len(gold)), gold_index] = float("-inf")
    return float((gold_lp - others.max(-1).values).mean())


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
            rows.append({"metric": "act_accuracy", "split": split, "condition": condition,
                         "value": accuracy(logprobs, subset.gold), "n_examples": len(subset.gold)})
    if texts is not None:
        for condition, condition_edits in (("original", None), ("calibrated", edits)):
            rows.append({"metric": "act_text_nll", "condition": condition, "n_examples": len(texts),
                         "value": float(text_nll(model, texts, config.batch_size, condition_edits).nanmean())})
    frame = pd.DataFrame(rows)
    frame["n_heads"] = len(chosen)
    search_rows = search.rename(columns={"delta": "value"}).assign(metric="act_search_delta")
    frame = pd.concat([search_rows, frame], ignore_index=True)
    frame["beta"], frame["threshold"], frame["task"] = config.beta, config.threshold, config.task
    return _finish(frame, model)


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
        per_token = to_tidy(nll, ("position",), metric="streaming_token_nll", cache=cache)
        per_token["position"] += 1  # the position of the predicted token
        rows.append(per_token)
        rows.append(pd.DataFrame([{"metric": "streaming_nll", "cache": cache, "value": float(nll[window:].mean()),
                                   "n_tokens": length - 1 - window}]))
    frame = pd.concat(rows, ignore_index=True)
    frame["start_size"], frame["recent_size"] = start_size, recent_size
    return _finish(frame, model)


# ---------------------------------------------------------------------------- config + runner
class CalibrationConfig(StrictModel):
    """ACT calibration block (``analyses.sinks.calibration``); absent = not run."""

    task: str = Field(BUILTIN_SENTIMENT, description="'sentiment' (built-in) or a .jsonl of {id, text, label}")
    template: str = Field(SENTIMENT_TEMPLATE, description="prompt template with a {text} placeholder")
    labels: tuple[str, ...] = Field(SENTIMENT_LABELS, min_length=2, description="label words, in order")
    calibration_size: PositiveInt = Field(40, description="first N examples search heads; the rest evaluate")
    beta: float = Field(0.4, ge=0.0, le=1.0, description="sink columns are scaled by beta (ACT: 0.4)")
    threshold: float = Field(0.1, gt=0.0, lt=1.0, description="sink detection threshold (ACT: 0.1)")
    layers: list[NonNegativeInt] | None = Field(None, description="candidate layers; None = ACT's 2..L-2")
    heads: list[tuple[NonNegativeInt, NonNegativeInt]] | None = Field(
        None, description="calibrate these (layer, head) pairs and skip the search")
    text_loss: bool = Field(True, description="also measure next-token loss on the analysis texts")
    batch_size: PositiveInt = 16


class StreamingConfig(StrictModel):
    """StreamingLLM block (``analyses.sinks.streaming``); absent = not run."""

    texts: str = Field(BUILTIN, description="texts joined by blank lines into one long sequence")
    max_tokens: PositiveInt = Field(1024, description="truncate the joined text to N tokens")
    start_size: NonNegativeInt = Field(4, description="sink tokens kept (StreamingLLM: 4)")
    recent_size: PositiveInt = Field(64, description="recent tokens kept")


class SinksConfig(StrictModel):
    """Options of the ``sinks`` analysis (config block ``analyses.sinks``)."""

    texts: str = Field(BUILTIN, description="'builtin', or a .jsonl / .txt file of texts")
    limit: PositiveInt | None = Field(None, description="use only the first N texts")
    max_tokens: PositiveInt = Field(64, description="truncate each text to its first N tokens (Gu et al.: 64)")
    epsilon: float = Field(0.3, gt=0.0, lt=1.0, description="sink-rate threshold on the sink score (Gu et al.: 0.3)")
    hidden_threshold: float = Field(0.1, gt=0.0, lt=1.0, description="hidden-sink threshold (ACT: 0.1)")
    hidden_min_queries: PositiveInt = Field(
        1, description="ignore hidden sinks seen by fewer queries (1 = ACT's rule; the last keys of local heads "
        "otherwise count as sinks)")
    massive_top_k: PositiveInt = Field(3, description="top |h| entries kept per layer and text (Sun et al.: 3)")
    massive_min_value: float = Field(100.0, gt=0.0, description="massive if |h| exceeds this (Sun et al.: 100)")
    massive_min_ratio: float = Field(1000.0, gt=0.0, description="... and is this many times the median (1000)")
    batch_size: PositiveInt = 4
    attention: AttentionPath = Field(
        "auto", description="how patterns are read: auto = the fused kernel where the model allows it (exact rows "
        "from q, k and the softmax normaliser, memory linear in context), else eager hook_pattern; fused | eager")
    prepend_bos: bool | None = Field(
        None, description="None = the loaded tokenizer's setting (TransformerBridge turns add_bos_token on, so "
        "SmolLM2 inputs start with <|im_start|>); False = no special tokens, the plain HF tokenizer of Gu et al.; "
        "True = force a BOS")
    calibration: CalibrationConfig | None = None
    streaming: StreamingConfig | None = None


def check_config(config: SinksConfig) -> None:
    """Fail before any model is loaded when a text set or the classification set is missing or unusable."""
    load_texts(config.texts, config.limit)
    if config.calibration is not None:
        task = load_classification(config.calibration.task, config.calibration.template, config.calibration.labels)
        task.split(config.calibration.calibration_size)
    if config.streaming is not None:
        load_texts(config.streaming.texts)


def run_sinks_from_config(model: HookedModel, config: SinksConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: sink scores, then the optional ACT calibration and StreamingLLM blocks."""
    ids, texts = load_texts(config.texts, config.limit)
    massive = MassiveCriteria(config.massive_top_k, config.massive_min_value, config.massive_min_ratio)
    parts = [run_sinks(model, texts, example_ids=ids, max_tokens=config.max_tokens, epsilon=config.epsilon,
                       hidden_threshold=config.hidden_threshold, hidden_min_queries=config.hidden_min_queries,
                       massive=massive, batch_size=config.batch_size, prepend_bos=config.prepend_bos,
                       progress=progress, attention=config.attention)]
    if config.calibration is not None:
        block = config.calibration
        task = load_classification(block.task, block.template, block.labels)
        loss_texts = (model.tokenize_dataset(texts, max_tokens=config.max_tokens, prepend_bos=config.prepend_bos,
                                             example_ids=ids) if block.text_loss else None)
        parts.append(run_calibration(model, task, block, loss_texts, progress=progress))
    if config.streaming is not None:
        block = config.streaming
        _, stream_texts = load_texts(block.texts)
        stream = model.tokenize_dataset(["\n\n".join(stream_texts)], max_tokens=block.max_tokens,
                                        prepend_bos=config.prepend_bos, example_ids=["stream"])
        parts.append(run_streaming(model, stream.tokens[0], start_size=block.start_size,
                                   recent_size=block.recent_size, token_texts=stream.token_texts[0]))
    return pd.concat(parts, ignore_index=True)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="attention sinks: sink scores and rate, hidden sinks, massive activations, ACT calibration, "
                "StreamingLLM cache check",
    citation="Gu et al. 2024, When Attention Sink Emerges in Language Models (arXiv 2410.10781)",
    config_model=SinksConfig,
    run=run_sinks_from_config,
    headline_metrics=("sink_score_mean",),
    headline_position=0,
    check=check_config,
    figures="mechbench.analyses.sinks.figures",
    text_sharded=True,
    context_length_options=lambda length: {"max_tokens": length},
)
