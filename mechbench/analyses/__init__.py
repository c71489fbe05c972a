"""Analyses: one package each, discovered by the registry.

Every package ``mechbench/analyses/<name>/`` exports one :class:`AnalysisSpec` as ``SPEC``; so can
any installed distribution, through the ``mechbench.analyses`` entry-point group (an entry point
names a spec object, ``my_pkg.analysis:SPEC``). The CLI's choices and help, the sweep's tables and
the docs' analysis list all come from :data:`ANALYSES`, so an analysis is added by adding its
package, and one that is not registered cannot be half-visible.

Importing this module loads no analysis and no plotting library: discovery runs on first use of
:data:`ANALYSES`, and a spec's figures are imported only when they are drawn.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from mechbench.config import StrictModel
    from mechbench.core.tidy import ExtraColumns

#: Entry-point group through which other distributions add analyses.
ENTRY_POINT_GROUP = "mechbench.analyses"


@dataclass(frozen=True)
class AnalysisSpec:
    """Everything the CLI, the sweeps, the report and the docs need to know about an analysis."""

    name: str
    description: str
    citation: str
    config_model: type[StrictModel]
    #: ``run(model, options, progress)``; ``options`` is an instance of :attr:`config_model`; ``model`` is any
    #: loaded model (a runner raises CapabilityError where the model lacks a capability the analysis needs)
    run: Callable[[Any, Any, bool], pd.DataFrame]
    #: per-head metrics `mechbench show` and the report rank by default, in order of preference: a run's
    #: options decide which it writes (e.g. circuits without activation patching); empty: no ranking.
    headline_metrics: tuple[str, ...]
    headline_position: int | None = None
    #: checks the options need no model for (e.g. the dataset exists and is not empty), run before loading
    check: Callable[[Any], None] | None = None
    #: module whose ``figures(frame)`` draws the analysis's own figures for the report and notebooks
    #: (beyond the generic per-head heatmaps) from its rows of one run; imported only when drawing
    figures: str | None = None
    #: other names accepted for the analysis in configs and on the command line
    aliases: tuple[str, ...] = ()
    #: whether a sweep may split the analysis's ``texts`` (with ``limit``) into task shards
    text_sharded: bool = False
    #: how a sweep's context length becomes the analysis's options (None: it has no context length)
    context_length_options: Callable[[int], dict[str, Any]] | None = None
    #: the analysis's own columns beyond the core schema and their dtypes (what its runner's
    #: :func:`mechbench.core.tidy.finish_rows` gives them)
    columns: ExtraColumns | None = None

    def headline_metric(self, written: Iterable[str]) -> str | None:
        """The first of :attr:`headline_metrics` among the metrics a run ``written`` (None if none is)."""
        present = set(written)
        return next((metric for metric in self.headline_metrics if metric in present), None)

    def build_figures(self, frame: pd.DataFrame) -> list[go.Figure]:
        """The analysis's own non-empty figures of ``frame`` (its rows of one run); none without a module."""
        if self.figures is None:
            return []
        return list(importlib.import_module(self.figures).figures(frame))


class Registry(MutableMapping[str, "AnalysisSpec"]):
    """Analysis name → spec, filled on first use from the packages beside this module and the
    ``mechbench.analyses`` entry points; aliases resolve to their analysis for lookups."""

    def __init__(self) -> None:
        self._specs: dict[str, AnalysisSpec] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        found: list[AnalysisSpec] = []
        for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if module.ispkg:
                found.append(importlib.import_module(f"{__name__}.{module.name}").SPEC)
        found += [entry.load() for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                                                   key=lambda e: e.name)]
        # only once every spec imported: a failed import leaves the registry to be discovered again, not empty
        self._discovered = True
        for spec in found:
            self.register(spec)

    def register(self, spec: AnalysisSpec) -> AnalysisSpec:
        """Add an analysis; a name or alias that is already taken is an error."""
        for name in (spec.name, *spec.aliases):
            if name in self._specs or name in self._aliases:
                raise ValueError(f"analysis {name!r} is already registered")
        self._specs[spec.name] = spec
        self._aliases.update((alias, spec.name) for alias in spec.aliases)
        return spec

    def canonical(self, name: str) -> str:
        """The analysis's own name for ``name`` (itself, or the analysis an alias stands for)."""
        self._discover()
        return self._aliases.get(name, name)

    def __getitem__(self, name: str) -> AnalysisSpec:
        return self._specs[self.canonical(name)]

    def __setitem__(self, name: str, spec: AnalysisSpec) -> None:
        self._discover()
        self._specs[self.canonical(name)] = spec

    def __delitem__(self, name: str) -> None:
        self._discover()
        del self._specs[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in self._specs

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(self._specs)

    def __len__(self) -> int:
        self._discover()
        return len(self._specs)


ANALYSES = Registry()


def register_analysis(spec: AnalysisSpec) -> AnalysisSpec:
    """Add an analysis to the registry; a second registration of the same name is an error."""
    ANALYSES.canonical(spec.name)  # discover first, so that a clash with a built-in one is found
    return ANALYSES.register(spec)


def unknown_analysis_message(name: str) -> str:
    """The one-line explanation for an analysis name that is not registered."""
    return f"unknown analysis {name!r}; available: {', '.join(sorted(ANALYSES))}"
