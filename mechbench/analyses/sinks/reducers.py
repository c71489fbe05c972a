"""Streaming Recorder reducers of the sinks analysis: sink scores and massive activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechbench.core.fused import AttentionView, Streaming
from mechbench.core.recorder import Batch

from .metrics import massive_activations, received_attention, scores_from_received


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
