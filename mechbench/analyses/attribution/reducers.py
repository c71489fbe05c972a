"""Streaming reducer of the attribution analysis: the attention views of each example, gathered by the Recorder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechbench.analyses.attribution.metrics import Example, attention_rollout, query_view
from mechbench.core.dataset import Batch


@dataclass
class AttentionViews:
    """Per example: head view ``[layer, head, T]``, layer view ``[layer, T]``, all-layer view ``[T]``,
    cumulative rollout ``[layer, T]``, all read at the target's query rows."""

    head: Tensor
    layer: Tensor
    all: Tensor
    rollout: Tensor


@dataclass
class ViewReducer:
    """Recorder reducer keeping, per example, the query-row head views and the head-mean maps for rollout."""

    examples: Sequence[Example]
    n_layers: int
    n_heads: int
    head: dict[int, Tensor] = field(default_factory=dict)
    maps: dict[int, Tensor] = field(default_factory=dict)

    def __call__(self, layer: int, pattern: Tensor, batch: Batch) -> None:
        for row, (index, n) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            if index not in self.head:
                self.head[index] = torch.full((self.n_layers, self.n_heads, n), float("nan"), dtype=torch.float64)
                self.maps[index] = torch.full((self.n_layers, n, n), float("nan"), dtype=torch.float64)
            heads = pattern[row, :, :n, :n].double().cpu()
            self.head[index][layer] = query_view(heads, self.examples[index].target.query_rows)
            self.maps[index][layer] = heads.mean(0)

    def views(self, index: int) -> AttentionViews:
        head, maps = self.head[index], self.maps[index]
        rows = self.examples[index].target.query_rows
        layer = head.mean(1)
        return AttentionViews(head=head, layer=layer, all=layer.mean(0),
                              rollout=query_view(attention_rollout(maps), rows))
