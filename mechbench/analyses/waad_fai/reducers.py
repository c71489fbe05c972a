"""The streaming reducer of the WAAD/FAI analysis: head spans, WAAD and FAI block by block, and token entropies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechbench.analyses.waad_fai.metrics import (
    fai_from_mass,
    future_attention_mass,
    horizon_sizes,
    lag_weighted_sum,
    next_token_entropy,
    windowed_distance,
)
from mechbench.core.fused import AttentionView, Streaming
from mechbench.core.recorder import Batch


@dataclass
class DistanceReducer:
    """Recorder reducer: per example, head spans ``[layer, head]`` and per-head WAAD / FAI ``[layer, head, |R|]``
    (NaN for layers not recorded), and, from the logits, the entropy of each response token."""

    streaming = Streaming()  # it reads the response rows: the fused pass computes each row block once
    prompt_lengths: list[int]
    lengths: list[int]
    n_layers: int
    n_heads: int
    window: int
    h_lo: int
    h_hi: int | None

    def __post_init__(self) -> None:
        n = len(self.lengths)
        self.spans = torch.full((n, self.n_layers, self.n_heads), float("nan"), dtype=torch.float64)
        shapes = [(self.n_layers, self.n_heads, total - prompt)
                  for prompt, total in zip(self.prompt_lengths, self.lengths, strict=True)]
        self.waad = [torch.full(shape, float("nan"), dtype=torch.float64) for shape in shapes]
        self.fai = [torch.full(shape, float("nan"), dtype=torch.float64) for shape in shapes]
        self.entropy = [torch.full(shape[-1:], float("nan"), dtype=torch.float64) for shape in shapes]

    def _rows(self, batch: Batch) -> list[tuple[int, int, int, int]]:
        return [(row, index, self.prompt_lengths[index], length)
                for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True))]

    def __call__(self, layer: int, view: AttentionView, batch: Batch) -> None:
        """Reduce one layer: the response rows of every example, block by block (never a ``[head, T, T]`` tensor).

        Per block: the span summands and WAAD of its rows, and its share of each response key's FAI numerator."""
        examples = self._rows(batch)
        received = {index: torch.zeros(self.n_heads, length - prompt, dtype=torch.float64)
                    for _, index, prompt, length in examples}
        span_sums = {index: torch.zeros(self.n_heads, dtype=torch.float64) for _, index, _, _ in examples}
        start, stop = min(prompt for _, _, prompt, _ in examples), max(length for _, _, _, length in examples)
        for first, rows in view.blocks(start, stop, trim=True):  # a causal block's keys stop at its last row
            for row, index, prompt, length in examples:
                low, high = max(first, prompt), min(first + rows.shape[-2], length)
                if low >= high:
                    continue
                block = rows[row, :, low - first:high - first, :length]
                span_sums[index] += lag_weighted_sum(block, low).cpu()
                waad_rows = windowed_distance(block, low, self.window)
                self.waad[index][layer, :, low - prompt:high - prompt] = waad_rows.cpu()
                mass = future_attention_mass(block, low, (prompt, block.shape[-1]), self.h_lo, self.h_hi)
                received[index][:, :mass.shape[-1]] += mass.cpu()
        for _, index, prompt, length in examples:
            self.spans[index, layer] = span_sums[index] / (length - prompt)
            self.fai[index][layer] = fai_from_mass(received[index], horizon_sizes((prompt, length), self.h_lo,
                                                                                  self.h_hi))

    def first_logit(self, batch: Batch) -> int:
        """The first position whose logits :meth:`keep_entropy` reads in ``batch`` (a Recorder ``logits_from``)."""
        return min(self.prompt_lengths[index] for index in batch.indices.tolist()) - 1

    def keep_entropy(self, logits: Tensor, first: int, batch: Batch) -> None:
        """Entropy of the distribution that emitted each response token ``t`` (logits at ``t - 1``) [INFERRED], from
        one chunk of logits ``[batch, n, vocab]`` of positions ``first ..`` (a Recorder ``on_logits``)."""
        for row, index, prompt, length in self._rows(batch):
            low, high = max(first, prompt - 1), min(first + logits.shape[1], length - 1)
            if low < high:
                self.entropy[index][low - prompt + 1:high - prompt + 1] = next_token_entropy(
                    logits[row, low - first:high - first]).cpu()

