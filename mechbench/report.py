"""``mechbench report``: one self-contained HTML file per run (plotly inlined, works offline)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from mechbench.analyses import ANALYSES
from mechbench.errors import StoreError
from mechbench.plots import head_heatmap, position_profile
from mechbench.store.result_store import ResultStore, atomic_write_bytes


def top_heads(frame: pd.DataFrame, metric: str, position: int | None, top: int) -> pd.DataFrame:
    """The ``top`` heads by ``metric`` (at ``position`` where the metric is per position); per-example
    rows are averaged over examples first, so each head appears once."""
    rows = frame[(frame["metric"] == metric) & frame["head"].notna()]
    if position is not None and rows["position"].notna().any():
        rows = rows[rows["position"] == position]
    per_head = rows.groupby(["layer", "head"], as_index=False)["value"].mean()
    return per_head.sort_values(["value", "layer", "head"], ascending=[False, True, True]).head(top)


def _section(analysis: str, frame: pd.DataFrame, include_js: list[bool]) -> str:
    spec = ANALYSES.get(analysis)
    parts = [f"<h2>{html.escape(analysis)}</h2>"]
    if spec is not None:
        parts.append(f"<p>{html.escape(spec.description)}. <em>{html.escape(spec.citation)}</em></p>")
        where = "" if spec.headline_position is None else f" at position {spec.headline_position}"
        heads = frame[(frame["metric"] == spec.headline_metric) & frame["head"].notna()]
        if spec.headline_position is not None:
            heads = heads[heads["position"] == spec.headline_position]
        if not heads.empty:
            figure = head_heatmap(heads, f"{spec.headline_metric}{where}", spec.headline_metric)
            parts.append(_figure_html(figure, include_js))
            table = top_heads(frame, spec.headline_metric, spec.headline_position, 15)
            parts.append(table[["layer", "head", "value"]].to_html(index=False, float_format="{:.4f}".format))
    model_level = frame[frame["layer"].isna() & frame["position"].notna()]
    for metric, rows in model_level.groupby("metric"):
        parts.append(_figure_html(position_profile(rows, f"{metric} by position", str(metric)), include_js))
    return "\n".join(parts)


def _figure_html(figure: object, include_js: list[bool]) -> str:
    first = not include_js[0]
    include_js[0] = True
    return figure.to_html(full_html=False, include_plotlyjs=bool(first))  # type: ignore[attr-defined]


def write_report(store: ResultStore, run_id: str, out: Path | None = None) -> Path:
    """Write the HTML report of one run and return its path (default ``<store>/reports/<run>.html``)."""
    manifest = store.manifest(run_id)
    frame = store.read(run_id=run_id)
    if frame.empty:
        raise StoreError(f"run {run_id!r} has no results yet; run or resume it first")
    include_js = [False]
    sections = [_section(str(a), rows, include_js) for a, rows in frame.groupby("analysis")]
    provenance = html.escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>mechbench run {html.escape(run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>mechbench run {html.escape(run_id)}</h1>
<p>model <b>{html.escape(str(manifest.get('model')))}</b>, status <b>{html.escape(str(manifest.get('status')))}</b>,
{len(frame)} rows</p>
{''.join(sections)}
<h2>Provenance</h2><pre>{provenance}</pre></body></html>"""
    path = out or store.root / "reports" / f"{run_id}.html"
    atomic_write_bytes(Path(path), page.encode("utf-8"))
    return Path(path)
