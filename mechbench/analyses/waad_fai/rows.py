"""Tidy rows of the WAAD/FAI analysis, and its metric names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from mechbench.analyses.waad_fai.metrics import Head, find_peaks, near, random_positions
from mechbench.core.dataset import TokenDataset
from mechbench.core.tidy import ExtraColumns, to_tidy

ANALYSIS = "waad_fai"
#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=("response_position", "n_examples", "n_heads", "n_events", "n_random", "prompt_length",
                             "window", "h_lo", "h_hi"), booleans=("is_peak", "receiver"))
HEAD_SPAN = "head_span"
RECEIVER_SCORE = "receiver_score"
WAAD = "waad"
FAI = "fai"
ENTROPY = "entropy"
RESPONSE_LENGTH = "response_length"
COUPLING_PREFIX = "coupling_"
COUPLING_ENTROPY = "coupling_entropy"
COUPLING_FAI_COOCCURRENCE = "coupling_fai_cooccurrence"
COUPLING_WAAD_FAI = "coupling_waad_fai"
COUPLING_METRICS = (COUPLING_ENTROPY, COUPLING_FAI_COOCCURRENCE, COUPLING_WAAD_FAI)


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
            (COUPLING_ENTROPY, waad_peaks, ~torch.isnan(local) & ~torch.isnan(ent), ent.double()),
            (COUPLING_FAI_COOCCURRENCE, receiver_peaks, ~torch.isnan(receiver),
             near(global_peaks, tolerance, tolerance).double()),
            (COUPLING_WAAD_FAI, global_peaks, ~torch.isnan(glob), near(waad_peaks, follow_window, 0).double()),
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


def head_rows(spans: Tensor, receiver_score: Tensor, local: Sequence[Head], glob: Sequence[Head],
              receivers: Sequence[Head], n_examples: int) -> pd.DataFrame:
    """``head_span`` (with ``n_examples``) and ``receiver_score`` per (layer, head), each with ``group``
    (local/global/neither) and ``receiver``."""
    groups = {head: "local" for head in local} | {head: "global" for head in glob}
    heads = to_tidy(spans, ("layer", "head"), metric=HEAD_SPAN, n_examples=n_examples)
    heads = pd.concat([heads, to_tidy(receiver_score, ("layer", "head"), metric=RECEIVER_SCORE)], ignore_index=True)
    keys = list(zip(heads["layer"], heads["head"], strict=True))
    heads["group"] = [groups.get(key, "neither") for key in keys]
    heads["receiver"] = [key in receivers for key in keys]
    return heads


def response_length_rows(dataset: TokenDataset, prompt_lengths: list[int]) -> pd.DataFrame:
    """``response_length`` per example, with ``prompt_length`` and the ``response`` text."""
    return pd.DataFrame({"example": dataset.example_ids, "metric": RESPONSE_LENGTH,
                         "value": [float(n - p) for n, p in zip(dataset.lengths, prompt_lengths, strict=True)],
                         "prompt_length": prompt_lengths,
                         "response": ["".join(texts[p:]) for texts, p in zip(dataset.token_texts, prompt_lengths,
                                                                            strict=True)]})
