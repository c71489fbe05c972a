"""The distance analysis's own figures for the report and notebooks (beyond the per-head heatmaps)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from mechbench import plots
from mechbench.analyses.distance.rows import COUPLING_PREFIX, ENTROPY, FAI, RESPONSE_LENGTH, WAAD
from mechbench.plots import rows_of


def figures(frame: pd.DataFrame) -> list[go.Figure]:
    """WAAD, FAI and entropy along the longest response; peak coupling against random positions."""
    out = []
    lengths = rows_of(frame, RESPONSE_LENGTH)
    if not lengths.empty:
        example = lengths.sort_values(["value", "example"], ascending=[False, True])["example"].iloc[0]
        rows = frame[frame["example"] == example]
        for metric, group, label in ((WAAD, None, "WAAD"), (FAI, "head_set", "FAI"),
                                     (ENTROPY, None, "entropy (nats)")):
            part = rows_of(rows, metric)
            if not part.empty:
                out.append(plots.token_profile(part, f"{label} along {example}", group=group, value_label=label))
    coupling = frame[frame["metric"].str.startswith(COUPLING_PREFIX)]
    if not coupling.empty:
        bars = pd.concat([coupling.assign(kind="peaks"),
                          coupling.assign(kind="random positions", value=coupling["baseline"])])
        out.append(plots.grouped_bars(bars, "metric", "kind", "Coupling at peaks vs random positions", "rate"))
    return out
