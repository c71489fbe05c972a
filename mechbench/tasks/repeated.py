"""Repeated random tokens: ``[BOS] + r + r`` with ``r`` a random block, the standard induction probe."""

from __future__ import annotations

import torch
from torch import Tensor


def repeated_random_tokens(n_examples: int, block_length: int, vocab_size: int, seed: int = 0,
                           bos: int | None = 0, low: int = 1, distinct: bool = False) -> Tensor:
    """``[n_examples, (1 if bos is not None) + 2 * block_length]`` token ids, seeded.

    Tokens of the block are drawn uniformly from ``[low, vocab_size)`` (keep special ids below
    ``low``), with ``distinct`` without replacement (no token twice in a block, so each position of
    the second half has one earlier occurrence); the second half repeats the first exactly.
    """
    if block_length < 2 or n_examples < 1:
        raise ValueError("need n_examples >= 1 and block_length >= 2")
    if distinct and vocab_size - low < block_length:
        raise ValueError(f"a block of {block_length} distinct tokens needs {block_length} ids in [{low}, {vocab_size})")
    generator = torch.Generator().manual_seed(seed)
    if distinct:
        block = torch.stack([torch.randperm(vocab_size - low, generator=generator)[:block_length] + low
                             for _ in range(n_examples)])
    else:
        block = torch.randint(low, vocab_size, (n_examples, block_length), generator=generator)
    parts = [block, block]
    if bos is not None:
        parts.insert(0, torch.full((n_examples, 1), bos, dtype=torch.long))
    return torch.cat(parts, dim=1)
