"""TAPPA's Recorder reducers: the main pass (q-sim, pattern types, RoPE bands) and the pruning pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechbench.analyses.tappa.metrics import (
    BandAccumulator,
    Mode,
    PatternAccumulator,
    PatternCriteria,
    block_influence,
    q_similarity,
)
from mechbench.core.fused import AttentionView, Streaming
from mechbench.core.recorder import Batch
from mechbench.errors import CapabilityError


@dataclass
class TappaReducer:
    """Recorder view reducer for the main pass: per example and layer, q-sim of the ``kv`` variant per head
    (from the view's post-RoPE queries, or the plain queries of a model without RoPE); pattern-type scores
    per head (:class:`PatternAccumulator`) and RoPE band advantages per head (:class:`BandAccumulator`),
    both fed the view's row blocks. Keeps ``[example, layer, head, ...]`` numbers only."""

    streaming = Streaming(attended_keys=True)  # every row, and A K for the bands and the entropies
    n_examples: int
    n_layers: int
    n_heads: int
    kv_window: int
    mode: Mode
    rbf_sigma: float
    criteria: PatternCriteria
    n_bands: int | None
    adjacent_pairs: bool = False

    def __post_init__(self) -> None:
        shape = (self.n_examples, self.n_layers, self.n_heads)
        self.kv_qsim = torch.full(shape, float("nan"), dtype=torch.float64)
        self.scores = {name: torch.full(shape, float("nan"), dtype=torch.float64)
                       for name in ("vertical", "diagonal", "periodic", "diffuse", "period")}
        n_bands = self.n_bands or 1
        self.bands = torch.full((*shape, n_bands), float("nan"), dtype=torch.float64)

    def __call__(self, layer: int, view: AttentionView, batch: Batch) -> None:
        if view.query is None or view.key is None:
            raise CapabilityError(f"layer {layer}'s attention came without its queries and keys, which TAPPA needs")
        examples = list(zip(range(batch.lengths.numel()), batch.indices.tolist(), batch.lengths.tolist(),
                            strict=True))
        patterns, bands = {}, {}
        for row, index, length in examples:
            window = view.query[row, :, max(0, length - self.kv_window):length]
            self.kv_qsim[index, layer] = q_similarity(window, self.mode, self.rbf_sigma).cpu()
            patterns[index] = PatternAccumulator(length, (self.n_heads,), self.criteria, view.query.device)
            if self.n_bands is not None:
                bands[index] = BandAccumulator(view.query[row, :, :length], view.key[row, :, :length], self.n_bands,
                                               adjacent_pairs=self.adjacent_pairs)
        start = 1 if bands else self.criteria.local_window + 1
        for first, rows in view.blocks(start, max(length for _, _, length in examples), trim=True):
            for row, index, length in examples:
                block = rows[row, :, :max(0, length - first), :length]
                if block.shape[-2] == 0:
                    continue
                # A K serves the band lifts and, on the fused path, the rows' entropies
                attended = view.attended_rows(block, first, row)
                patterns[index].add(block, first, view.row_entropies(block, first, row, attended))
                if index in bands:
                    bands[index].add(block, first, attended)
        for row, index, length in examples:
            def columns(keys: Tensor, row: int = row, length: int = length) -> Tensor:
                return view.columns(keys)[row, :, :length]

            scores = patterns[index].scores(columns)
            for name, values in scores.items():
                self.scores[name][index, layer] = values
            if index in bands:
                self.bands[index, layer] = bands[index].advantage()


@dataclass
class PruneReducer:
    """Recorder reducer for the pruning pass over windows: per window and layer, the pre-RoPE q-sim
    (mean over heads is taken later) and the mean Block Influence over the window's tokens."""

    n_windows: int
    n_layers: int
    n_heads: int
    mode: Mode
    rbf_sigma: float
    _resid: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.q_sim = torch.full((self.n_windows, self.n_layers, self.n_heads), float("nan"), dtype=torch.float64)
        self.bi = torch.full((self.n_windows, self.n_layers), float("nan"), dtype=torch.float64)

    def queries(self, layer: int, q: Tensor, batch: Batch) -> None:
        for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            self.q_sim[index, layer] = q_similarity(q[row, :, :length], self.mode, self.rbf_sigma).cpu()

    def resid_pre(self, layer: int, resid: Tensor, batch: Batch) -> None:
        self._resid[layer] = resid

    def resid_post(self, layer: int, resid: Tensor, batch: Batch) -> None:
        before = self._resid.pop(layer)
        for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            self.bi[index, layer] = float(block_influence(before[row, :length], resid[row, :length]).mean())
