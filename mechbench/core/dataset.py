"""Tokenised datasets and right-padded batches, shared by the Recorder and every runner."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenDataset:
    """Examples as token-id tensors, with their ids and per-token text (for tidy rows and plots)."""

    tokens: list[Tensor]
    example_ids: list[str]
    token_texts: list[list[str]]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> list[int]:
        return [int(t.numel()) for t in self.tokens]

    @property
    def max_length(self) -> int:
        return max(self.lengths)


@dataclass(frozen=True)
class Batch:
    """A right-padded batch: real tokens of example ``indices[i]`` are ``tokens[i, :lengths[i]]``.

    Right padding keeps every real token at its true position, and in a causal model no real query
    can see a pad; encoders get ``attention_mask`` so that pads are hidden from them too.
    """

    tokens: Tensor
    lengths: Tensor
    indices: Tensor

    @property
    def attention_mask(self) -> Tensor:
        positions = torch.arange(self.tokens.shape[1])
        return (positions[None, :] < self.lengths[:, None]).long()

    @property
    def is_ragged(self) -> bool:
        return bool((self.lengths != self.tokens.shape[1]).any())


def iter_batches(dataset: TokenDataset, batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Batches in a deterministic order that groups similar lengths (longest first) to limit padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(dataset)), key=lambda i: (-dataset.lengths[i], i))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        lengths = torch.tensor([dataset.lengths[i] for i in chosen])
        tokens = torch.full((len(chosen), int(lengths.max())), pad_id, dtype=torch.long)
        for row, i in enumerate(chosen):
            tokens[row, : lengths[row]] = dataset.tokens[i]
        yield Batch(tokens=tokens, lengths=lengths, indices=torch.tensor(chosen))


def spans_to_token_positions(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token span ``[first, last)`` covering the character span ``[start, end)`` of a text.

    ``offsets`` are the tokenizer's per-token character offsets (special tokens have ``(0, 0)`` and
    are never part of a span). A token belongs to the span if its characters overlap it.
    Raises ValueError if no token overlaps the span.
    """
    if not 0 <= start < end:
        raise ValueError(f"empty or negative character span [{start}, {end})")
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not hits:
        raise ValueError(f"no token covers characters [{start}, {end}) of the text")
    return hits[0], hits[-1] + 1
