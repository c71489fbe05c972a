"""``mechbench report``: one self-contained HTML file per run (plotly inlined once, works offline).

Layout: a page (section) per analysis with a heatmap for every head-level metric, the analysis's
own figures (each analysis package's ``figures`` module) and its model-level numbers; one cross-metric page that puts
every head metric of the run side by side (a table sortable by any column, and their rank
correlations); the run's provenance. All text from the store (token text included) is HTML-escaped,
and plotly's JSON is embedded with ``</`` escaped, so a prompt containing ``<script>`` is shown,
never run.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mechbench.analyses import ANALYSES
from mechbench.errors import StoreError
from mechbench.plots import escape_label, head_heatmap, position_profile
from mechbench.store.result_store import ResultStore, atomic_write_bytes
from mechbench.store.schema import CORE_COLUMNS

#: extra columns that label an observation's text, never a condition to split a metric by
TEXT_COLUMNS = frozenset({"token", "key_token", "response", "text", "prompt", "answer"})
#: a metric split by more conditions than this is left to the analysis's own figures
MAX_FACETS = 8
#: rows of model-level numbers shown per analysis
MAX_SCALAR_ROWS = 60


def top_heads(frame: pd.DataFrame, metric: str, position: int | None, top: int) -> pd.DataFrame:
    """The ``top`` heads by ``metric`` (at ``position`` where the metric is per position); per-example
    rows are averaged over examples first, so each head appears once."""
    rows = frame[(frame["metric"] == metric) & frame["head"].notna()]
    if position is not None and rows["position"].notna().any():
        rows = rows[rows["position"] == position]
    per_head = rows.groupby(["layer", "head"], as_index=False)["value"].mean()
    return per_head.sort_values(["value", "layer", "head"], ascending=[False, True, True]).head(top)


@dataclass(frozen=True)
class HeadMetric:
    """One per-head quantity of a run: ``values`` has one row per head (``layer``, ``head``, ``value``)."""

    analysis: str
    metric: str
    condition: str
    values: pd.DataFrame

    @property
    def label(self) -> str:
        return f"{self.analysis}: {self.metric}" + (f" [{self.condition}]" if self.condition else "")


def _facet_columns(rows: pd.DataFrame) -> list[str] | None:
    """Extra categorical columns that take several values for the same head (conditions such as
    ``method`` or ``task``); None when they would split the metric into too many parts."""
    extra = [c for c in rows.columns if c not in CORE_COLUMNS and c not in TEXT_COLUMNS and rows[c].notna().all()
             and not pd.api.types.is_numeric_dtype(rows[c])]
    facets = [c for c in extra if rows.groupby(["layer", "head"])[c].nunique().max() > 1]
    if facets and len(rows[facets].drop_duplicates()) > MAX_FACETS:
        return None
    return facets


def head_metrics(frame: pd.DataFrame) -> list[HeadMetric]:
    """Every head-level quantity of a run, averaged over examples, one per (analysis, metric, condition).

    A head-level row has ``layer`` and ``head``; rows resolved by token ``position`` count only for
    an analysis's headline metric at its headline position (e.g. the sink score at position 0), since a
    per-position value is not a property of the head. Conditions (``method``, ``task``, ...) that vary
    for the same head are kept apart, never averaged together.
    """
    out = []
    heads = frame[frame["layer"].notna() & frame["head"].notna()]
    for (analysis, metric), rows in heads.groupby(["analysis", "metric"], sort=True):
        spec = ANALYSES.get(str(analysis))
        headline = spec.headline_metric(heads.loc[heads["analysis"] == analysis, "metric"]) if spec else None
        if rows["position"].notna().any():
            if headline != metric or spec is None or spec.headline_position is None:
                continue
            rows = rows[rows["position"] == spec.headline_position]
        facets = _facet_columns(_without_empty_extras(rows))
        if facets is None:
            continue
        groups = rows.groupby(facets, sort=True) if facets else [((), rows)]
        for key, part in groups:
            key = key if isinstance(key, tuple) else (key,)
            condition = ", ".join(f"{c}={v}" for c, v in zip(facets, key, strict=True))
            values = part.groupby(["layer", "head"], as_index=False)["value"].mean()
            if spec is not None and headline == metric and spec.headline_position is not None:
                condition = condition or f"position {spec.headline_position}"
            out.append(HeadMetric(str(analysis), str(metric), condition, values))
    return out


def head_table(metrics: list[HeadMetric]) -> pd.DataFrame:
    """Wide table: one row per head, one column per head metric (NaN where a metric skips a head)."""
    table = None
    for item in metrics:
        column = item.values.rename(columns={"value": item.label})
        table = column if table is None else table.merge(column, on=["layer", "head"], how="outer")
    if table is None:
        return pd.DataFrame(columns=["layer", "head"])
    table[["layer", "head"]] = table[["layer", "head"]].astype(int)
    return table.sort_values(["layer", "head"], ignore_index=True)


def metric_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation between every two head metrics over the heads both cover."""
    return table.drop(columns=["layer", "head"]).corr(method="spearman", min_periods=3)


# ---------------------------------------------------------------------------------------------- HTML pieces
class _Figures:
    """Embeds figures; plotly.js is inlined with the first one only."""

    def __init__(self) -> None:
        self.included = False

    def __call__(self, figure: go.Figure) -> str:
        first = not self.included
        self.included = True
        return f'<div class="figure">{figure.to_html(full_html=False, include_plotlyjs=first)}</div>'


def _anchor(name: str) -> str:
    return "page-" + "".join(c if c.isalnum() else "-" for c in name)


def _sortable(table: pd.DataFrame, table_id: str, digits: int = 4) -> str:
    """An HTML table (cells escaped) whose columns sort on a header click (see ``_SORT_JS``)."""
    head = "".join(f'<th onclick="sortTable(\'{table_id}\', {i})">{html.escape(str(c))}</th>'
                   for i, c in enumerate(table.columns))
    body = []
    for row in table.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                text = "" if np.isnan(value) else f"{value:.{digits}g}"
                cells.append(f'<td data-v="{"" if np.isnan(value) else repr(float(value))}">{text}</td>')
            else:
                cells.append(f'<td data-v="{html.escape(str(value))}">{html.escape(str(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _scalar_table(frame: pd.DataFrame) -> str:
    """Model-level numbers (no layer, head or position): the metric, its labelling columns, the value."""
    rows = frame[frame["layer"].isna() & frame["head"].isna() & frame["position"].isna()]
    if rows.empty:
        return ""
    rows = _without_empty_extras(rows)
    drop = {"run_id", "analysis", "model", "layer", "head", "position", "response"}
    columns = ["metric", *[c for c in rows.columns if c not in drop and c not in ("metric", "value")], "value"]
    shown = rows[columns].head(MAX_SCALAR_ROWS)
    shown = shown.loc[:, shown.notna().any() | shown.columns.isin(["metric", "value"])]
    more = f"<p>… {len(rows) - len(shown)} more rows in the store.</p>" if len(rows) > len(shown) else ""
    return "<h3>Model-level numbers</h3>" + shown.to_html(index=False, na_rep="", float_format="{:.4g}".format) + more


def _analysis_page(analysis: str, frame: pd.DataFrame, metrics: list[HeadMetric], embed: _Figures) -> str:
    spec = ANALYSES.get(analysis)
    parts = [f'<section id="{_anchor(analysis)}"><h2>{html.escape(analysis)}</h2>']
    if spec is not None:
        parts.append(f"<p>{html.escape(spec.description)}.<br><em>{html.escape(spec.citation)}</em></p>")
        headline = spec.headline_metric(frame["metric"])
        if headline is not None:
            best = top_heads(frame, headline, spec.headline_position, 10)
            if not best.empty:
                at = "" if spec.headline_position is None else f" at position {spec.headline_position}"
                parts.append(f"<h3>Top heads by {html.escape(headline)}{at}</h3>")
                best = best.astype({"layer": int, "head": int})
                parts.append(best.to_html(index=False, float_format="{:.4f}".format))
    for item in metrics:
        parts.append(embed(head_heatmap(item.values, item.label, item.metric)))
    if spec is not None and spec.figures is not None:
        parts += [embed(figure) for figure in spec.build_figures(frame)]
    else:  # no figures of its own: plot each model-level per-position profile
        profiles = frame[frame["layer"].isna() & frame["head"].isna() & frame["position"].notna()
                         & frame["example"].isna()]
        for metric, rows in profiles.groupby("metric"):
            parts.append(embed(position_profile(rows, f"{metric} by position", str(metric))))
    parts.append(_scalar_table(frame))
    parts.append("</section>")
    return "\n".join(parts)


def _cross_page(metrics: list[HeadMetric], embed: _Figures) -> str:
    if not metrics:
        return ""
    table = head_table(metrics)
    parts = [f'<section id="{_anchor("all-heads")}"><h2>All head metrics</h2>',
             f"<p>{len(table)} heads × {len(metrics)} head metrics of this run, each averaged over examples. "
             "Click a column header to sort by it (again to reverse).</p>",
             _sortable(table, "heads")]
    if len(metrics) >= 2:
        correlations = metric_correlations(table)
        figure = go.Figure(go.Heatmap(
            z=correlations.to_numpy(), x=[escape_label(c) for c in correlations.columns],
            y=[escape_label(c) for c in correlations.index], zmin=-1, zmax=1,
            colorscale="RdBu", colorbar={"title": "Spearman ρ"},
            hovertemplate="%{y}<br>%{x}<br>ρ = %{z:.3f}<extra></extra>"))
        figure.update_layout(title="Rank correlation between head metrics (over heads)", xaxis_title="head metric",
                             yaxis_title="head metric", height=max(420, 40 * len(metrics) + 260))
        parts.append(embed(figure))
    parts.append("</section>")
    return "\n".join(parts)


def _provenance_page(manifest: dict[str, Any]) -> str:
    facts = {key: manifest.get(key) for key in ("run_id", "status", "error", "model", "model_source",
                                                "weights_sha256", "seed", "started_at", "ended_at",
                                                "git_commit", "command") if manifest.get(key) is not None}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    full = html.escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return (f'<section id="{_anchor("provenance")}"><h2>Provenance</h2><table>{rows}</table>'
            f"<details><summary>full manifest (config, weights fingerprint, package versions)</summary>"
            f"<pre>{full}</pre></details></section>")


_STYLE = """body{font-family:system-ui,sans-serif;margin:0;display:flex}
nav{position:sticky;top:0;height:100vh;min-width:190px;padding:1em;background:#f3f4f6;box-sizing:border-box}
nav a{display:block;margin:.3em 0;color:#1f4f99;text-decoration:none}
main{padding:1em 2em;max-width:1200px;overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}
table.sortable th{cursor:pointer;background:#eef}pre{background:#f6f6f6;padding:1em;overflow:auto}
section{border-bottom:2px solid #ddd;padding-bottom:1em}"""

_SORT_JS = """<script>
function sortTable(id, col) {
  const table = document.getElementById(id), body = table.tBodies[0];
  const rows = Array.from(body.rows), asc = table.dataset.col == col && table.dataset.dir == "desc";
  rows.sort((a, b) => {
    const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    if (x === "") return 1; if (y === "") return -1;
    const d = (isNaN(x) || isNaN(y)) ? x.localeCompare(y) : Number(x) - Number(y);
    return asc ? d : -d;
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.col = col; table.dataset.dir = asc ? "asc" : "desc";
}
</script>"""


def _without_empty_extras(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop the analysis-specific columns another analysis added (all null here); keep the core schema."""
    empty = [c for c in frame.columns if c not in CORE_COLUMNS and frame[c].isna().all()]
    return frame.drop(columns=empty)


def render_report(frame: pd.DataFrame, manifest: dict[str, Any]) -> str:
    """The report page of one run's rows as an HTML string."""
    run_id = str(manifest.get("run_id", ""))
    embed = _Figures()
    metrics = head_metrics(frame)
    analyses = [str(a) for a in frame["analysis"].drop_duplicates().sort_values()]
    pages = [_analysis_page(a, _without_empty_extras(frame[frame["analysis"] == a]),
                            [m for m in metrics if m.analysis == a], embed) for a in analyses]
    cross = _cross_page(metrics, embed)
    links = [(a, a) for a in analyses] + ([("all-heads", "All head metrics")] if cross else [])
    nav = "".join(f'<a href="#{_anchor(target)}">{html.escape(text)}</a>' for target, text in links)
    nav += f'<a href="#{_anchor("provenance")}">Provenance</a>'
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>mechbench run {html.escape(run_id)}</title><style>{_STYLE}</style>{_SORT_JS}</head>
<body><nav><b>mechbench</b>{nav}</nav><main><h1>mechbench run {html.escape(run_id)}</h1>
<p>model <b>{html.escape(str(manifest.get('model')))}</b>, status <b>{html.escape(str(manifest.get('status')))}</b>,
{len(frame):,} rows, analyses: {html.escape(', '.join(analyses))}</p>
{''.join(pages)}{cross}{_provenance_page(manifest)}</main></body></html>"""


def write_report(store: ResultStore, run_id: str, out: Path | None = None) -> Path:
    """Write the HTML report of one run and return its path (default ``<store>/reports/<run>.html``)."""
    manifest = store.manifest(run_id)
    frame = store.read(run_id=run_id)
    if frame.empty:
        raise StoreError(f"run {run_id!r} has no results yet; run or resume it first")
    path = Path(out or store.root / "reports" / f"{run_id}.html")
    atomic_write_bytes(path, render_report(frame, manifest).encode("utf-8"))
    return path


def head_metric_summary(tables: dict[str, pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Per (head metric, model): mean, median and max over heads and the head with the max
    (``tables``: model -> wide head table of :func:`head_table`)."""
    records = []
    for column in columns:
        for model, table in tables.items():
            values = table[["layer", "head", column]].dropna()
            if values.empty:
                continue
            best = values.loc[values[column].idxmax()]
            records.append({"metric": column, "model": model, "heads": len(values), "mean": values[column].mean(),
                            "median": values[column].median(), "max": best[column],
                            "max_head": f"L{int(best['layer'])}H{int(best['head'])}"})
    return pd.DataFrame(records)
