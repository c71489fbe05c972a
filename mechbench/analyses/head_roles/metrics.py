"""Classic head roles measured on attention patterns: previous-token and induction scores.

* Previous-token score (Olsson et al. 2022, "In-context Learning and Induction Heads"): mean
  attention from each position ``t >= 1`` to ``t - 1``.
* Induction score (Olsson et al. 2022; TransformerLens' convention): on ``[BOS] + r + r`` with a
  random block ``r`` of length ``L``, the mean attention from each query ``t`` of the second copy to
  key ``t - L + 1`` (the token after the earlier occurrence of the current token).
"""

from __future__ import annotations

import torch
from torch import Tensor


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
