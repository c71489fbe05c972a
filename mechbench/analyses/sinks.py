"""Attention sinks: per-head, per-key sink scores and the sink rate.

Definitions (``docs/metrics/sinks.md``):

* Sink score (Gu et al. 2024, "When Attention Sink Emerges in Language Models", arXiv 2410.10781,
  ``sail-sg/Attention-Sink`` ``eval_sink_open_source.py``; the same form is ACT's detector,
  Yu et al. 2024, ``GATECH-EIC/ACT``): the mean attention key ``k`` receives from the queries that
  can see it. For a causal pattern ``A`` of ``T`` tokens (0-indexed)::

      alpha[l, h, k] = 1 / (T - k) * sum_{t=k}^{T-1} A[l, h][t, k]

  For a bidirectional (encoder) pattern every query sees every key, so the divisor is ``T``.
* Sink rate ``Sink_k^eps`` (Gu et al.): the percentage of (example, layer, head) triples with
  ``alpha[l, h, k] > eps``; the paper uses ``eps = 0.3`` on the first ``T = 64`` tokens.

The runner :func:`run_sinks` streams one layer's pattern at a time through the Recorder and keeps
only ``[heads, T]`` per layer and example, never the ``layers x heads x T x T`` cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from pydantic import Field, PositiveInt
from torch import Tensor

from mechbench.config import StrictModel
from mechbench.core.hooked import HookedModel
from mechbench.core.recorder import Batch, Recorder
from mechbench.core.tidy import to_tidy
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
    if lengths is None:
        lengths = torch.full((batch,), n_key, dtype=torch.long)
    lengths = lengths.to(pattern.device)
    if pattern.dtype in (torch.float16, torch.bfloat16):
        pattern = pattern.float()  # sum over up to T queries: half precision would lose the small scores
    positions = torch.arange(n_key, device=pattern.device)
    valid = positions[None, :] < lengths[:, None]  # [batch, pos]
    received = (pattern * valid[:, None, :, None].to(pattern.dtype)).sum(dim=-2)  # sum over real queries
    n_seeing = (lengths[:, None] - positions[None, :]).clamp(min=1) if causal else lengths[:, None].expand(batch, n_key)
    scores = received.double() / n_seeing[:, None, :].double()
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


@dataclass
class SinkScoreReducer:
    """Recorder reducer: keeps sink scores ``[example, layer, head, position]`` and drops each pattern."""

    n_examples: int
    n_layers: int
    n_heads: int
    max_len: int
    causal: bool

    def __post_init__(self) -> None:
        self.scores = torch.full((self.n_examples, self.n_layers, self.n_heads, self.max_len), float("nan"),
                                 dtype=torch.float64)

    def __call__(self, layer: int, pattern: Tensor, batch: Batch) -> None:
        scores = sink_scores(pattern, batch.lengths, causal=self.causal)
        self.scores[batch.indices, layer, :, : scores.shape[-1]] = scores.cpu()


def run_sinks(model: HookedModel, texts: Sequence[str], *, max_tokens: int = 64, epsilon: float = 0.3,
              batch_size: int = 4, prepend_bos: bool | None = None, example_ids: Sequence[str] | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Record sink scores of every head on ``texts`` and return tidy rows.

    Each text is tokenised and truncated to its first ``max_tokens`` tokens (Gu et al. use 64).
    Rows: ``sink_score`` per (example, layer, head, position) with the ``token`` text,
    ``sink_score_mean`` over examples (``example`` null), and ``sink_rate`` per position (percent of
    example x layer x head with score > ``epsilon``; ``layer``/``head`` null).
    """
    dataset = model.tokenize_dataset(texts, max_tokens=max_tokens, prepend_bos=prepend_bos,
                                     example_ids=example_ids)
    reducer = SinkScoreReducer(len(dataset), model.n_layers, model.n_heads, dataset.max_length, model.causal)
    Recorder(model, batch_size=batch_size, progress=progress).run(dataset, {"pattern": reducer},
                                                                  description="sink scores")
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
    frame = pd.concat([per_example, mean, rate], ignore_index=True)
    frame["n_examples"] = frame["n_examples"].astype("Int64")
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


class SinksConfig(StrictModel):
    """Options of the ``sinks`` analysis (config block ``analyses.sinks``)."""

    texts: str = Field(BUILTIN, description="'builtin', or a .jsonl / .txt file of texts")
    limit: PositiveInt | None = Field(None, description="use only the first N texts")
    max_tokens: PositiveInt = Field(64, description="truncate each text to its first N tokens (Gu et al.: 64)")
    epsilon: float = Field(0.3, gt=0.0, lt=1.0, description="sink-rate threshold on the sink score (Gu et al.: 0.3)")
    batch_size: PositiveInt = 4
    prepend_bos: bool | None = Field(
        None, description="None = the loaded tokenizer's setting (TransformerBridge turns add_bos_token on, so "
        "SmolLM2 inputs start with <|im_start|>); False = no special tokens, the plain HF tokenizer of Gu et al.; "
        "True = force a BOS")


def check_config(config: SinksConfig) -> None:
    """Fail before any model is loaded when the text set is missing or empty."""
    load_texts(config.texts, config.limit)


def run_sinks_from_config(model: HookedModel, config: SinksConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: load the configured texts and call :func:`run_sinks`."""
    ids, texts = load_texts(config.texts, config.limit)
    return run_sinks(model, texts, example_ids=ids, max_tokens=config.max_tokens, epsilon=config.epsilon,
                     batch_size=config.batch_size, prepend_bos=config.prepend_bos, progress=progress)
