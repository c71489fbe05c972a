"""The distance analysis's own figures for the report and notebooks.

One function per figure, each taking the analysis's rows of one run and returning None when the frame lacks
the rows it draws; :func:`figures` composes the report's figures (the head-span heatmap is for the
notebooks: the report draws a heatmap of every head metric itself).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.waad_fai.rows import COUPLING_PREFIX, ENTROPY, FAI, HEAD_SPAN, RESPONSE_LENGTH, WAAD
from mechbench.plots import rows_of


def head_span_heatmap(frame: pd.DataFrame) -> go.Figure | None:
    """Layer x head heatmap of the mean attention distance d(l,h) on the response (Eq. 7)."""
    spans = rows_of(frame, HEAD_SPAN)
    if spans.empty:
        return None
    return plots.head_heatmap(spans, "Mean attention distance d(l,h) on the response", "span (tokens)")


def longest_example(frame: pd.DataFrame) -> str | None:
    """The example with the longest response (ties: the first id in sort order); None without
    ``response_length`` rows."""
    lengths = rows_of(frame, RESPONSE_LENGTH)
    if lengths.empty:
        return None
    return lengths.sort_values(["value", "example"], ascending=[False, True])["example"].iloc[0]


def _profile(frame: pd.DataFrame, metric: str, group: str | None, label: str,
             example: str | None) -> go.Figure | None:
    example = longest_example(frame) if example is None else example
    if example is None:
        return None
    part = rows_of(frame[frame["example"] == example], metric)
    if part.empty:
        return None
    return plots.token_profile(part, f"{label} along {example}", group=group, value_label=label)


def waad_profile(frame: pd.DataFrame, example: str | None = None) -> go.Figure | None:
    """WAAD (local heads) along one response, its peaks marked; ``example`` defaults to the longest response."""
    return _profile(frame, WAAD, None, "WAAD", example)


def fai_profile(frame: pd.DataFrame, example: str | None = None) -> go.Figure | None:
    """FAI along one response, one line per head set, peaks marked; ``example`` defaults to the longest response."""
    return _profile(frame, FAI, "head_set", "FAI", example)


def entropy_profile(frame: pd.DataFrame, example: str | None = None) -> go.Figure | None:
    """Next-token entropy along one response; ``example`` defaults to the longest response."""
    return _profile(frame, ENTROPY, None, "entropy (nats)", example)


def coupling_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The coupling checks' rows (``coupling_*``: the statistic at peaks, ``baseline`` at random positions)."""
    return frame[frame["metric"].str.startswith(COUPLING_PREFIX)]


def coupling_bars(frame: pd.DataFrame) -> go.Figure | None:
    """Each coupling statistic at the peaks next to the same statistic at random positions (paper Table 2)."""
    coupling = coupling_rows(frame)
    if coupling.empty:
        return None
    bars = pd.concat([coupling.assign(kind="peaks"),
                      coupling.assign(kind="random positions", value=coupling["baseline"])])
    return plots.grouped_bars(bars, "metric", "kind", "Coupling at peaks vs random positions", "rate")


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """WAAD, FAI and entropy along the longest response; peak coupling against random positions."""
    example = longest_example(frame)
    drawn = (waad_profile(frame, example), fai_profile(frame, example), entropy_profile(frame, example),
             coupling_bars(frame))
    return [figure for figure in drawn if figure is not None]
