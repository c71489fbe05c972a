"""Sink metrics on attention patterns and residual streams: tensors in, tensors (or numbers) out."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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


def _mean_margin(logprobs: Tensor, gold: list[int]) -> float:
    gold_index = torch.tensor(gold)
    gold_lp = logprobs[torch.arange(len(gold)), gold_index]
    others = logprobs.clone()
    others[torch.arange(len(gold)), gold_index] = float("-inf")
    return float((gold_lp - others.max(-1).values).mean())
