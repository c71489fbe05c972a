"""WAAD and FAI: local vs global heads and the preplan-and-anchor rhythm of a reasoning response.

Li et al. 2025, "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization" (arXiv 2510.13554; no official code). One forward pass over
prompt ⊕ response; ``R`` = the response rows (query positions), ``A[l,h]`` = the causal pattern
(``docs/metrics/distance.md``):

* head span (Eq. 7): ``d(l,h) = 1/|R| sum_{t in R} sum_{s<=t} A[l,h][t,s] (t - s)``;
* head groups (Eq. 8): heads sorted by ``d``; the bottom 30 % are local (``H_loc``), the top 30 %
  global (``H_glob``); the group maps ``Abar_loc``, ``Abar_glob`` are plain means of their patterns;
* WAAD (Eq. 9): ``WAAD_t = sum_{s<=t} Abar_loc[t,s] min(t - s, W)``, ``W = 10``;
* FAI (Eq. 10): ``FAI_s = 1/|T(s)| sum_{t in T(s)} Abar_glob[t,s]`` with
  ``T(s) = {t in R : s + H_lo <= t <= min(N, s + H_hi)}``.

Streaming: WAAD and FAI are linear in the pattern, so the mean over a group's heads of per-head
WAAD (FAI) equals the WAAD (FAI) of the group map. :class:`DistanceReducer` reads each layer's
response rows block by block (an :class:`~mechbench.core.fused.AttentionView`, fused by default) and
keeps, per example, ``d`` and per-head WAAD and FAI vectors (``[layer, head, |R|]``): the span and
WAAD of a row need only that row, and FAI's numerator is a column sum over the future response rows,
accumulated block by block (:func:`future_attention_mass`). Groups are chosen after the pass (from
``d`` averaged over the examples) and the group means are taken over the kept vectors. Peak memory
is one block of rows (bounded) plus ``2 x layers x heads x |R|`` floats per example, never a
``[head, T, T]`` pattern on the fused path. The pure functions (:func:`head_spans`, :func:`waad`,
:func:`fai`) take full patterns and share the per-row arithmetic with the reducer.

[INFERRED] (not specified by the paper): the analysis horizon starts at ``H_lo = 1`` (a token's
attention to itself is not future attention), groups are chosen once per dataset, the peak rule
(:func:`find_peaks`), receiver heads at token level (:func:`kurtosis` of per-head FAI), the entropy
of a response token (that of the distribution that emitted it) and the windows of the coupling
statistics (:func:`coupling_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import Seed, StrictModel
from mechbench.core.dataset import TokenDataset
from mechbench.core.decoding import greedy_decode
from mechbench.core.fused import AttentionView, Streaming
from mechbench.core.hooked import HookedModel
from mechbench.core.lags import column_sums, lag_sums, lag_weighted_rows
from mechbench.core.limits import check_context, check_layers
from mechbench.core.recorder import ATTENTION, AttentionPath, Batch, Recorder
from mechbench.core.tidy import to_tidy
from mechbench.errors import ConfigError, DatasetError
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import Template
from mechbench.tasks.reasoning import (
    BUILTIN,
    Problem,
    Transcript,
    load_problems,
    load_transcripts,
    problem_prompt,
    token_pieces,
    tokenize_transcript,
)

ANALYSIS = "distance"
Head = tuple[int, int]


# ---------------------------------------------------------------------------- metric functions
def _response_rows(pattern: Tensor, response_rows: tuple[int, int]) -> tuple[int, int]:
    n_query, n_key = pattern.shape[-2:]
    if n_query != n_key:
        raise ValueError(f"a square self-attention pattern is needed, got {n_query} queries x {n_key} keys")
    start, end = response_rows
    if not 0 <= start < end <= n_key:
        raise ValueError(f"response rows [{start}, {end}) are not a non-empty range of the {n_key} positions")
    return start, end


def lag_weighted_sum(rows: Tensor, first: int) -> Tensor:
    """``sum_t sum_{s<=t} A[t,s] (t - s)`` over causal pattern ``rows`` ``[..., r, keys]`` whose first row is query
    ``first``: the head span's numerator (Eq. 7), from the rows' lag profile. Returns ``[...]`` float64."""
    profile = lag_sums(rows, first)
    return profile @ torch.arange(profile.shape[-1], dtype=torch.float64, device=profile.device)


def windowed_distance(rows: Tensor, first: int, window: int) -> Tensor:
    """``WAAD_t = sum_{s<=t} A[t,s] min(t - s, W)`` (Eq. 9) for each causal pattern row ``t`` of ``rows``
    ``[..., r, keys]`` (first row = query ``first``) as ``W sum_s A[t,s] - sum_{delta<W} (W - delta) A[t, t-delta]``:
    a row sum and ``W`` diagonals, not a weight per entry. Returns ``[..., r]`` float64."""
    below = window - torch.arange(window, dtype=torch.float64, device=rows.device)  # W - delta, delta < W
    return window * rows.float().sum(-1).double() - lag_weighted_rows(rows, first, below)


def future_attention_mass(rows: Tensor, first: int, response_rows: tuple[int, int], h_lo: int = 1,
                          h_hi: int | None = None) -> Tensor:
    """The numerator of FAI (Eq. 10) from one block of causal pattern ``rows`` ``[..., r, keys]`` (first row = query
    ``first``, all inside the response): ``sum_{t in block, t in T(s)} A[t,s]`` for each response key ``s``.
    Summed over the blocks of the response rows it is ``sum_{t in T(s)} A[t,s]``. Returns ``[..., |R|]`` float64."""
    start, end = response_rows
    return column_sums(rows[..., start:end], first - start, h_lo, h_hi)


def horizon_sizes(response_rows: tuple[int, int], h_lo: int = 1, h_hi: int | None = None) -> Tensor:
    """``|T(s)|`` for each response key ``s`` (Eq. 10): rows ``t in R`` with ``s + h_lo <= t <= min(N, s + h_hi)``."""
    start, end = response_rows
    keys = torch.arange(start, end)
    last = torch.full_like(keys, end - 1) if h_hi is None else (keys + h_hi).clamp(max=end - 1)
    return (last - keys - h_lo + 1).clamp(min=0)


def fai_from_mass(received: Tensor, sizes: Tensor) -> Tensor:
    """``FAI_s = received_s / |T(s)|``, NaN where ``T(s)`` is empty."""
    sizes = sizes.to(received.device)
    return torch.where(sizes > 0, received / sizes.clamp(min=1), float("nan"))


def head_spans(pattern: Tensor, response_rows: tuple[int, int]) -> Tensor:
    """Mean attention distance of each head over the response rows (Li et al. 2025, Eq. 7).

    ``pattern``: ``[..., T, T]`` causal attention; ``response_rows``: ``[start, end)`` query positions
    ``R``. ``d = 1/|R| sum_{t in R} sum_{s<=t} A[t,s] (t - s)``. Returns ``[...]`` float64.
    """
    start, end = _response_rows(pattern, response_rows)
    return lag_weighted_sum(pattern[..., start:end, :], start) / (end - start)


def waad(group_map: Tensor, response_rows: tuple[int, int], window: int = 10) -> Tensor:
    """Windowed Average Attention Distance of each response row (Li et al. 2025, Eq. 9).

    ``WAAD_t = sum_{s<=t} Abar_loc[t,s] min(t - s, W)`` for ``t`` in ``[start, end)``, so
    ``0 <= WAAD_t <= W``. ``group_map``: ``[..., T, T]`` (a group mean or single heads).
    Returns ``[..., |R|]`` float64.
    """
    start, end = _response_rows(group_map, response_rows)
    return windowed_distance(group_map[..., start:end, :], start, window)


def fai(group_map: Tensor, response_rows: tuple[int, int], h_lo: int = 1, h_hi: int | None = None) -> Tensor:
    """Future Attention Influence of each response token (Li et al. 2025, Eq. 10).

    ``FAI_s = 1/|T(s)| sum_{t in T(s)} Abar_glob[t,s]``, ``T(s) = {t in R : s + h_lo <= t <= min(N, s + h_hi)}``
    with ``N`` the last response position; ``h_hi=None`` = to the end of the response. For ``s`` in
    ``[start, end)``; NaN where ``T(s)`` is empty. Returns ``[..., |R|]`` float64.
    """
    start, end = _response_rows(group_map, response_rows)
    received = future_attention_mass(group_map[..., start:end, :], start, (start, end), h_lo, h_hi)
    return fai_from_mass(received, horizon_sizes((start, end), h_lo, h_hi))


def split_heads(spans: Tensor, local_frac: float = 0.3, global_frac: float = 0.3) -> tuple[list[Head], list[Head]]:
    """Local and global heads (Li et al. 2025, Sec. 4): the bottom ``local_frac`` and the top
    ``global_frac`` of the heads by span ``d``.

    ``spans``: ``[layer, head]``; NaN heads (layers not recorded) are in neither group. Group sizes are
    ``round(frac x n)`` (at least 1) of the ``n`` heads with a span; ties keep layer-then-head order.
    Returns ``(local, global)`` lists of ``(layer, head)``, closest / farthest first.
    """
    ranked = [head for head in ranked_heads(spans) if not torch.isnan(spans[head])]
    n_local, n_global = (max(1, int(frac * len(ranked) + 0.5)) for frac in (local_frac, global_frac))
    if n_local + n_global > len(ranked):
        raise ConfigError(f"distance: {len(ranked)} heads cannot hold {n_local} local and {n_global} global heads; "
                          "lower local_frac / global_frac or record more layers")
    return ranked[::-1][:n_local], ranked[:n_global]


def kurtosis(values: Tensor) -> Tensor:
    """Excess kurtosis over the last axis, NaN entries ignored (population moments, ``scipy.stats.kurtosis``'s
    default); NaN with fewer than 4 values or no variance."""
    present = ~torch.isnan(values)
    n = present.sum(-1)
    mean = values.nan_to_num(0.0).sum(-1) / n.clamp(min=1)
    deviation = (values - mean[..., None]).nan_to_num(0.0)
    m2 = deviation.pow(2).sum(-1) / n.clamp(min=1)
    m4 = deviation.pow(4).sum(-1) / n.clamp(min=1)
    return torch.where((n >= 4) & (m2 > 0), m4 / m2.clamp(min=1e-300).pow(2) - 3.0, float("nan"))


def find_peaks(values: Tensor, quantile: float = 0.9) -> Tensor:
    """[INFERRED] Peaks of a 1-D series (the paper does not give its rule): local maxima at or above the
    series' ``quantile`` (NaN ignored).

    A position is a local maximum when it is ``>=`` both neighbours and ``>`` at least one (an edge
    compares with its only neighbour; a NaN neighbour counts as lower), so a flat series has no
    peak. Returns a bool mask.
    """
    present = ~torch.isnan(values)
    if not present.any():
        return present
    filled = values.double().nan_to_num(nan=float("-inf"))
    left = torch.cat([filled[:1], filled[:-1]])
    right = torch.cat([filled[1:], filled[-1:]])
    threshold = torch.quantile(values[present].double(), quantile)
    local_max = (filled >= left) & (filled >= right) & ((filled > left) | (filled > right))
    return present & local_max & (filled >= threshold)


def near(targets: Tensor, before: int, after: int) -> Tensor:
    """For each position ``i`` of a bool series: is some target at ``u`` with ``i - before <= u <= i + after``."""
    offsets = torch.arange(targets.numel())[:, None] - targets.nonzero().flatten()[None, :]  # i - u
    return ((offsets <= before) & (offsets >= -after)).any(-1)


def random_positions(pool: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` positions drawn without replacement from the True entries of ``pool`` (all of them when fewer)."""
    candidates = pool.nonzero().flatten()
    chosen = torch.zeros_like(pool)
    chosen[candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]] = True
    return chosen


COUPLING_METRICS = ("coupling_entropy", "coupling_fai_cooccurrence", "coupling_waad_fai")


def coupling_statistics(waad_values: Sequence[Tensor], fai_global: Sequence[Tensor], fai_receiver: Sequence[Tensor],
                        entropy: Sequence[Tensor], *, quantile: float = 0.9, tolerance: int = 1,
                        follow_window: int = 3, n_random: int = 20,
                        generator: torch.Generator | None = None) -> pd.DataFrame:
    """The three checks of Li et al. 2025, Table 2, each against random positions (per example, aligned
    ``[|R|]`` series; peaks by :func:`find_peaks`).

    * ``coupling_entropy``: mean token entropy at WAAD peaks;
    * ``coupling_fai_cooccurrence``: share of receiver-head FAI peaks with a global-head FAI peak within
      ``± tolerance`` tokens;
    * ``coupling_waad_fai``: share of global FAI peaks at ``s`` with a WAAD peak at ``u``,
      ``s - follow_window <= u <= s`` (the FAI peak follows or coincides with it).

    ``value`` pools the event positions of all examples; ``baseline`` is the same statistic at random
    positions, per example as many as events, drawn ``n_random`` times from the positions where the
    event series is defined (``generator`` makes it deterministic). Windows are [INFERRED].
    """
    totals = {name: [0.0, 0, 0.0, 0] for name in COUPLING_METRICS}  # event sum, events, random sum, random draws
    for local, glob, receiver, ent in zip(waad_values, fai_global, fai_receiver, entropy, strict=True):
        waad_peaks, global_peaks, receiver_peaks = (find_peaks(v, quantile) for v in (local, glob, receiver))
        checks = (
            ("coupling_entropy", waad_peaks, ~torch.isnan(local) & ~torch.isnan(ent), ent.double()),
            ("coupling_fai_cooccurrence", receiver_peaks, ~torch.isnan(receiver),
             near(global_peaks, tolerance, tolerance).double()),
            ("coupling_waad_fai", global_peaks, ~torch.isnan(glob), near(waad_peaks, follow_window, 0).double()),
        )
        for name, events, pool, score in checks:
            total = totals[name]
            total[0] += float(score[events].sum())
            total[1] += int(events.sum())
            for _ in range(n_random):
                drawn = random_positions(pool, int(events.sum()), generator)
                total[2] += float(score[drawn].sum())
                total[3] += int(drawn.sum())
    return pd.DataFrame([{"metric": name, "value": s / n if n else float("nan"),
                          "baseline": rs / rn if rn else float("nan"), "n_events": n, "n_examples": len(waad_values),
                          "n_random": n_random, "quantile": quantile}
                         for name, (s, n, rs, rn) in totals.items()])


def next_token_entropy(logits: Tensor, slice_bytes: int = 2**22) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last axis: ``-sum_v p_v log p_v`` in float32 (1e-6 relative
    to the log-normaliser; a float64 pass over the vocabulary took 16 % of a 2k-token forward pass), as float64.

    Rows go through in slices of at most ``slice_bytes`` so that the three passes over a slice stay in cache (3x
    faster than whole 128-row chunks of a 49k vocabulary)."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(1, slice_bytes // (4 * max(1, flat.shape[-1])))
    entropies = torch.empty(flat.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, flat.shape[0], rows):
        logprobs = flat[start:start + rows].float().log_softmax(-1)
        entropies[start:start + rows] = -(logprobs.exp() * logprobs).sum(-1)  # torch's cascade sum: no n eps drift
    return entropies.reshape(logits.shape[:-1])


def select_layers(n_layers: int, layers: Literal["all", "middle"] | Sequence[int], count: int = 5,
                  model: str = "the model") -> list[int]:
    """Recorded layers: ``all``; ``middle`` = ``count`` evenly spaced layers in ``floor(L/3) .. floor(2L/3)``
    (rounded, duplicates dropped; the paper's RL setup); or an explicit list (ConfigError naming ``model``
    when a layer is not one of its ``n_layers``)."""
    if layers == "all":
        return list(range(n_layers))
    if layers == "middle":
        return sorted(set(torch.linspace(n_layers // 3, 2 * n_layers // 3, count).round().long().tolist()))
    chosen = sorted(set(layers))
    if not chosen:
        raise ConfigError("distance.layers is an empty list; name at least one layer or use 'all' / 'middle'")
    check_layers("distance.layers", list(layers), chosen, n_layers, model,
                 f"give layers from 0 to {n_layers - 1} or use 'all' / 'middle'")
    return chosen


# ---------------------------------------------------------------------------- recording
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


def transcript_dataset(model: HookedModel, transcripts: Sequence[Transcript]) -> TokenDataset:
    """Prompt ⊕ response ids as a dataset, after checking each transcript fits the context window."""
    if not transcripts:
        raise DatasetError("no transcripts; give at least one prompt with a response")
    if len({t.id for t in transcripts}) != len(transcripts):
        raise DatasetError("transcript ids repeat; give every transcript a unique id")
    n_ctx = model.architecture.n_ctx
    tokens = []
    for transcript in transcripts:
        n_prompt, n_response = transcript.prompt_ids.numel(), transcript.response_ids.numel()
        if n_prompt == 0 or n_response == 0:
            raise DatasetError(f"transcript {transcript.id!r} has an empty {'prompt' if n_prompt == 0 else 'response'}"
                               "; give both a prompt and a response")
        check_context(n_prompt + n_response, n_ctx, model.name,
                      f"transcript {transcript.id!r} has {n_prompt} prompt + {n_response} response tokens",
                      "lower max_new_tokens or shorten the transcript")
        model.check_token_ids(transcript.prompt_ids, f"transcript {transcript.id!r}")
        model.check_token_ids(transcript.response_ids, f"transcript {transcript.id!r}")
        tokens.append(torch.cat([transcript.prompt_ids, transcript.response_ids]).long())
    return TokenDataset(tokens=tokens, example_ids=[t.id for t in transcripts],
                        token_texts=[token_pieces(model, ids) for ids in tokens])


def generate_transcripts(model: HookedModel, problems: Sequence[Problem], max_new_tokens: int = 128,
                         template: Template = "auto", progress: bool = True) -> list[Transcript]:
    """The model's own greedy answer to each problem (:func:`mechbench.analyses.retrieval.greedy_decode`),
    stopping after the end-of-sequence token (kept in the response) or ``max_new_tokens``."""
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    transcripts = []
    for problem in tqdm(problems, desc="answering", disable=not progress, unit="problem", leave=False):
        prompt = problem_prompt(model, problem, template)
        decoding = greedy_decode(model, prompt, max_new_tokens, stop_ids=() if eos is None else (int(eos),))
        transcripts.append(Transcript(id=problem.id, prompt_ids=prompt, response_ids=decoding.generated))
    return transcripts


# ---------------------------------------------------------------------------- runner
def _group_mean(per_head: Tensor, heads: Sequence[Head]) -> Tensor:
    """Mean of ``per_head[layer, head, ...]`` over ``heads``: the metric of the group's mean map (linearity)."""
    return per_head[[layer for layer, _ in heads], [head for _, head in heads]].mean(0)


def _series_rows(dataset: TokenDataset, prompt_lengths: list[int], series: Sequence[Tensor], metric: str,
                 quantile: float | None = None, **constants: object) -> pd.DataFrame:
    """Per (example, response position) rows of one series, with ``token`` and (given ``quantile``) ``is_peak``."""
    frames = []
    for example, prompt, texts, values in zip(dataset.example_ids, prompt_lengths, dataset.token_texts, series,
                                              strict=True):
        frame = pd.DataFrame({"example": example, "position": range(prompt, prompt + values.numel()),
                              "response_position": range(values.numel()), "token": texts[prompt:],
                              "value": values.numpy()})
        if quantile is not None:
            frame["is_peak"] = find_peaks(values, quantile).numpy()
        frames.append(frame[frame["value"].notna()])
    return pd.concat(frames, ignore_index=True).assign(metric=metric, **constants)


def record_distance(model: HookedModel, dataset: TokenDataset, prompt_lengths: Sequence[int], config: DistanceConfig,
                    progress: bool = True) -> DistanceReducer:
    """One pass over ``dataset`` (each example a prompt of ``prompt_lengths[i]`` tokens and its response): head
    spans, WAAD and FAI of the config's layers and the response tokens' entropies, in a :class:`DistanceReducer`."""
    layers = select_layers(model.n_layers, config.layers, model=model.name)
    reducer = DistanceReducer(list(prompt_lengths), dataset.lengths, model.n_layers, model.n_heads, config.window,
                              config.h_lo, config.h_hi)
    Recorder(model, batch_size=config.batch_size, progress=progress).run(
        dataset, {ATTENTION: reducer}, layers=layers, description="attention distance", on_logits=reducer.keep_entropy,
        logits_from=reducer.first_logit, attention=config.attention)
    return reducer


def run_distance(model: HookedModel, transcripts: Sequence[Transcript], config: DistanceConfig | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Head spans, local/global groups, WAAD, FAI, entropies and the coupling checks on ``transcripts``.

    Options come from ``config`` (a :class:`DistanceConfig`; its data-source fields are not used here).
    Rows: ``head_span`` per (layer, head) (mean over examples, ``group`` local/global/neither,
    ``receiver``); ``receiver_score`` per (layer, head) (mean excess kurtosis of the head's FAI);
    per (example, position) with ``token``, ``response_position``: ``waad`` (``is_peak``), ``fai``
    (``head_set`` global/receiver, ``is_peak``) and ``entropy``; ``response_length`` per example
    (``prompt_length``, ``response`` text); ``coupling_*`` with ``value``, ``baseline``, ``n_events``.
    """
    config = config or DistanceConfig()
    check_config(config, data=False)
    dataset = transcript_dataset(model, transcripts)
    prompt_lengths = [t.prompt_ids.numel() for t in transcripts]
    reducer = record_distance(model, dataset, prompt_lengths, config, progress)
    spans = reducer.spans.nanmean(0)
    local, glob = split_heads(spans, config.local_frac, config.global_frac)
    receiver_score = torch.stack([kurtosis(per_head) for per_head in reducer.fai]).nanmean(0)
    receivers = [head for head in ranked_heads(receiver_score) if not torch.isnan(receiver_score[head])][:len(glob)]
    waad_series = [_group_mean(per_head, local) for per_head in reducer.waad]
    fai_series = {"global": [_group_mean(per_head, glob) for per_head in reducer.fai],
                  "receiver": [_group_mean(per_head, receivers) for per_head in reducer.fai]}

    groups = {head: "local" for head in local} | {head: "global" for head in glob}
    heads = to_tidy(spans, ("layer", "head"), metric="head_span", n_examples=len(dataset))
    heads = pd.concat([heads, to_tidy(receiver_score, ("layer", "head"), metric="receiver_score")], ignore_index=True)
    keys = list(zip(heads["layer"], heads["head"], strict=True))
    heads["group"] = [groups.get(key, "neither") for key in keys]
    heads["receiver"] = [key in receivers for key in keys]
    rows = [heads,
            _series_rows(dataset, prompt_lengths, waad_series, "waad", config.peak_quantile, window=config.window,
                         n_heads=len(local)),
            *(_series_rows(dataset, prompt_lengths, fai_series[name], "fai", config.peak_quantile, head_set=name,
                           h_lo=config.h_lo, h_hi=config.h_hi, n_heads=len(glob)) for name in fai_series),
            _series_rows(dataset, prompt_lengths, reducer.entropy, "entropy"),
            pd.DataFrame({"example": dataset.example_ids, "metric": "response_length",
                          "value": [float(n - p) for n, p in zip(dataset.lengths, prompt_lengths, strict=True)],
                          "prompt_length": prompt_lengths,
                          "response": ["".join(texts[p:]) for texts, p in zip(dataset.token_texts, prompt_lengths,
                                                                             strict=True)]}),
            coupling_statistics(waad_series, fai_series["global"], fai_series["receiver"], reducer.entropy,
                                quantile=config.peak_quantile, tolerance=config.tolerance,
                                follow_window=config.follow_window, n_random=config.n_random,
                                generator=torch.Generator().manual_seed(config.seed))]
    frame = pd.concat(rows, ignore_index=True)
    for column in ("layer", "head", "position", "response_position", "n_examples", "n_heads", "n_events",
                   "n_random", "prompt_length", "window", "h_lo", "h_hi"):
        frame[column] = frame[column].astype("Int64")
    for column in ("is_peak", "receiver"):
        frame[column] = frame[column].astype("boolean")
    frame["local_frac"], frame["global_frac"] = config.local_frac, config.global_frac
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


# ---------------------------------------------------------------------------- config
class DistanceConfig(StrictModel):
    """Options of the ``distance`` analysis (config block ``analyses.distance``)."""

    problems: str = Field(BUILTIN, description="'builtin' (12 arithmetic word problems) or a .jsonl of "
                          "{id, question}; the model answers each greedily")
    transcripts: str | None = Field(None, description="a .jsonl of {id, prompt, response} to analyse instead of "
                                    "the model's own answers")
    limit: PositiveInt | None = Field(None, description="use only the first N problems / transcripts")
    template: Template = Field("auto", description="prompt for the problems; auto = chat when the tokenizer has "
                               "a chat template")
    max_new_tokens: PositiveInt = Field(128, description="longest generated response (tokens)")
    layers: Literal["all", "middle"] | list[NonNegativeInt] = Field(
        "all", description="heads of these layers: all (the paper's analysis), middle (5 evenly spaced layers in "
        "the middle third, the paper's RL setup) or a list")
    local_frac: float = Field(0.3, gt=0.0, lt=1.0, description="share of heads with the shortest span (local)")
    global_frac: float = Field(0.3, gt=0.0, lt=1.0, description="share of heads with the longest span (global)")
    window: PositiveInt = Field(10, description="WAAD distance cap W (paper: 10)")
    h_lo: NonNegativeInt = Field(1, description="FAI horizon start: rows t >= s + h_lo (analysis: 1 [INFERRED]; "
                                 "RL: 10)")
    h_hi: PositiveInt | None = Field(None, description="FAI horizon end: rows t <= s + h_hi (None = end of the "
                                     "response, the analysis setting; RL: 100)")
    peak_quantile: float = Field(0.9, ge=0.0, lt=1.0, description="[INFERRED] peaks are local maxima at or above "
                                 "this quantile of their series")
    tolerance: NonNegativeInt = Field(1, description="[INFERRED] receiver and global FAI peaks co-occur within "
                                      "this many tokens")
    follow_window: NonNegativeInt = Field(3, description="[INFERRED] an FAI peak follows a WAAD peak at most this "
                                          "many tokens before it (or at it)")
    n_random: PositiveInt = Field(20, description="random-position draws per example for the baselines")
    seed: Seed = Field(0, description="seed of the random-position baselines")
    batch_size: PositiveInt = 1
    attention: AttentionPath = Field("auto", description="how pattern rows are read: fused (rebuilt block by block "
                                     "from q, k and the softmax normaliser; memory linear in the context), eager "
                                     "(hook_pattern, one [head, T, T] per layer) or auto (fused where the model "
                                     "supports it)")


def check_config(config: DistanceConfig, data: bool = True) -> None:
    """Fail before any model is loaded on inconsistent options or (``data``) a missing or empty data file."""
    if config.local_frac + config.global_frac > 1:
        raise ConfigError(f"distance.local_frac + global_frac = {config.local_frac + config.global_frac:g} is above "
                          "1, so the groups overlap; lower one of them")
    if config.h_hi is not None and config.h_hi < config.h_lo:
        raise ConfigError(f"distance.h_hi ({config.h_hi}) is below distance.h_lo ({config.h_lo}); no row is in the "
                          "FAI horizon — raise h_hi or lower h_lo")
    if data:
        if config.transcripts is not None:
            load_transcripts(config.transcripts, config.limit)
        else:
            load_problems(config.problems, config.limit)


def run_distance_from_config(model: HookedModel, config: DistanceConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: tokenise the transcript file, or answer the problems greedily, then
    :func:`run_distance`."""
    check_config(config)
    if config.transcripts is not None:
        transcripts = [tokenize_transcript(model, *texts) for texts in load_transcripts(config.transcripts,
                                                                                         config.limit)]
    else:
        transcripts = generate_transcripts(model, load_problems(config.problems, config.limit),
                                           config.max_new_tokens, config.template, progress)
    return run_distance(model, transcripts, config, progress)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="local vs global heads by attention span; WAAD and FAI along a reasoning response, their peaks "
                "and how they couple",
    citation="Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables "
             "Fine-Grained Policy Optimization (arXiv 2510.13554)",
    config_model=DistanceConfig,
    run=run_distance_from_config,
    headline_metrics=("head_span",),
    check=check_config,
    figures="mechbench.analyses.distance.figures",
)
