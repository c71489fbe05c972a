"""Classic head roles measured on attention patterns: previous-token and induction scores.

* Previous-token score (Olsson et al. 2022, "In-context Learning and Induction Heads"): mean
  attention from each position ``t >= 1`` to ``t - 1``.
* Induction score (Olsson et al. 2022; TransformerLens' convention): on ``[BOS] + r + r`` with a
  random block ``r`` of length ``L``, the mean attention from each query ``t`` of the second copy to
  key ``t - L + 1`` (the token after the earlier occurrence of the current token).

These identify the heads of mechbench's toy models and are reused by pattern characterisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mechbench.core.dataset import Batch, TokenDataset
from mechbench.core.hooked import HookedModel
from mechbench.core.recorder import Recorder


def previous_token_score(pattern: Tensor) -> Tensor:
    """``[batch, head, q, k] -> [batch, head]``: ``mean_{t>=1} A[t, t-1]``."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def induction_score(pattern: Tensor, block_length: int, has_bos: bool = True) -> Tensor:
    """``[batch, head, q, k] -> [batch, head]``: ``mean_t A[t, t - L + 1]`` over the second copy of the block."""
    offset = 1 if has_bos else 0
    queries = torch.arange(offset + block_length, offset + 2 * block_length, device=pattern.device)
    if int(queries[-1]) >= pattern.shape[-2]:
        raise ValueError(f"pattern has {pattern.shape[-2]} positions, too few for two blocks of {block_length}")
    keys = queries - block_length + 1
    return pattern[..., queries, keys].mean(-1)


def _mean_over_examples(model: HookedModel, tokens: Tensor,
                        metric: Callable[[Tensor], Tensor], batch_size: int = 16) -> Tensor:
    """Run ``tokens`` (equal lengths) and average ``metric(pattern) -> [batch, head]`` per layer."""
    totals = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)

    def reducer(layer: int, pattern: Tensor, batch: Batch) -> None:
        totals[layer] += metric(pattern).double().sum(0).cpu()

    dataset = TokenDataset(tokens=list(tokens), example_ids=[str(i) for i in range(len(tokens))],
                           token_texts=[[] for _ in range(len(tokens))])
    Recorder(model, batch_size=batch_size, progress=False).run(dataset, {"pattern": reducer})
    return totals / len(tokens)


def induction_scores(model: HookedModel, tokens: Tensor, block_length: int, has_bos: bool = True) -> Tensor:
    """``[layer, head]`` induction scores on repeated-token sequences ``tokens``."""
    return _mean_over_examples(model, tokens, lambda p: induction_score(p, block_length, has_bos))


def previous_token_scores(model: HookedModel, tokens: Tensor) -> Tensor:
    """``[layer, head]`` previous-token scores on ``tokens``."""
    return _mean_over_examples(model, tokens, previous_token_score)
