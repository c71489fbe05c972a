"""Tidy rows of the circuits analysis built from computed scores, and its metric names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import pandas as pd
import torch
from torch import Tensor

from mechbench.analyses.circuits.metrics import (
    FAITHFULNESS,
    FAITHFULNESS_NORMALISED,
    JACCARD,
    OVERLAP_A,
    OVERLAP_B,
    faithfulness,
    overlap_permutation_test,
)
from mechbench.core.patching import Node
from mechbench.core.tidy import ExtraColumns
from mechbench.tasks.circuit_tasks import PairTokens

ANALYSIS = "circuits"

# ---------------------------------------------------------------------------- metric names
LOGIT_DIFF = "logit_diff"
LOGIT_DIFF_MEAN = "logit_diff_mean"
ACCURACY = "accuracy"
TOP1_ACCURACY = "top1_accuracy"
ACT_PATCH_NOISING = "act_patch_noising"
ACT_PATCH_DENOISING = "act_patch_denoising"
#: activation-patching metric of each direction
ACT_PATCH: dict[str, str] = {"noising": ACT_PATCH_NOISING, "denoising": ACT_PATCH_DENOISING}
ATTR_PATCH = "attr_patch"
DLA = "dla"
PATH_PATCH = "path_patch"
EAP: Final = "eap"
EAP_IG: Final = "eap_ig"
CIRCUIT_LOGIT_DIFF = "circuit_logit_diff"
ABLATED_LOGIT_DIFF = "ablated_logit_diff"
FAITHFULNESS_CURVE = "faithfulness_curve"
IN_CIRCUIT = "in_circuit"
#: the overlap statistics (keys of :func:`~mechbench.analyses.circuits.metrics.overlap`)
OVERLAP_METRICS: tuple[str, ...] = (OVERLAP_A, OVERLAP_B, JACCARD)


# ---------------------------------------------------------------------------- rows
def _node_rows(nodes: Sequence[Node], scores: Tensor, metric: str, **constants: Any) -> pd.DataFrame:
    return pd.DataFrame({"layer": [n.layer for n in nodes], "head": [n.head if n.kind == "head" else None
                                                                     for n in nodes],
                         "node": [n.label for n in nodes], "component": [n.kind for n in nodes],
                         "value": scores.double().tolist(), "metric": metric, **constants})


def baseline_rows(pairs: PairTokens, clean: Tensor, corrupt: Tensor, top1: Tensor) -> list[pd.DataFrame]:
    """Per-example clean and corrupt logit differences, then their means and the accuracies."""
    return [pd.DataFrame({"example": pairs.example_ids * 2, "value": torch.cat([clean, corrupt]).tolist(),
                          "metric": LOGIT_DIFF, "variant": ["clean"] * len(pairs) + ["corrupt"] * len(pairs)}),
            pd.DataFrame({"metric": [LOGIT_DIFF_MEAN, LOGIT_DIFF_MEAN, ACCURACY, TOP1_ACCURACY],
                          "variant": ["clean", "corrupt", "clean", "clean"],
                          "value": [float(clean.mean()), float(corrupt.mean()), float((clean > 0).double().mean()),
                                    float(top1.double().mean())], "n_examples": len(pairs)})]


def stage_rows(index: int, stage: Mapping[str, Any], chosen: set[str]) -> pd.DataFrame:
    """Path-patching scores of one stage's senders (``stage``, ``receivers``, ``in_stage_circuit``)."""
    receivers = ",".join(r if isinstance(r, str) else f"L{r[0]}H{r[1]}.{r[2]}" for r in stage["receivers"])
    rows = _node_rows(stage["senders"], stage["scores"], PATH_PATCH, method="path_patching",
                      stage=index, receivers=receivers)
    rows["in_stage_circuit"] = rows["node"].isin(chosen)
    return rows


def edge_rows(table: Mapping[tuple[str, str], float], kept: set[tuple[str, str]], gap: float,
              method: str) -> pd.DataFrame:
    """Edge scores ``{(sender, receiver): score}`` of one edge method, normalised by ``gap``, with circuit flags."""
    return pd.DataFrame({"sender": [u for u, _ in table], "receiver": [d for _, d in table],
                         "value": list(table.values()),
                         "normalised": [v / gap if gap else float("nan") for v in table.values()],
                         "in_circuit": [key in kept for key in table], "metric": method,
                         "method": method})


def faithfulness_rows(scores: Mapping[str, float], with_circuit: float, empty: float, circuit_size: int,
                      method: str, ablation: str, target: float | None = None,
                      reached: bool | None = None) -> pd.DataFrame:
    """The faithfulness scores and the two ablated logit differences they come from; with a
    ``target`` (the circuit chosen at a stated faithfulness) also whether it was ``reached``."""
    frame = pd.DataFrame({"metric": [*scores, CIRCUIT_LOGIT_DIFF, ABLATED_LOGIT_DIFF],
                          "value": [*scores.values(), with_circuit, empty], "circuit_size": circuit_size,
                          "method": method, "ablation": ablation})
    if target is not None:
        frame["faithfulness_target"], frame["target_reached"] = target, reached
    return frame


def curve_rows(sizes: Sequence[int], n_nodes: Sequence[int], logit_diffs: Sequence[float], full: float,
               empty: float, method: str, ablation: str) -> pd.DataFrame:
    """One ``faithfulness_curve`` row per size: the normalised faithfulness of the top-``circuit_size``
    items (``n_nodes`` nodes), with its plain faithfulness and logit difference beside it."""
    scores = [faithfulness(ld, full, empty) for ld in logit_diffs]
    return pd.DataFrame({"metric": FAITHFULNESS_CURVE, "value": [s[FAITHFULNESS_NORMALISED] for s in scores],
                         "faithfulness_ratio": [s[FAITHFULNESS] for s in scores], "circuit_ld": list(logit_diffs),
                         "circuit_size": list(sizes), "n_nodes": list(n_nodes), "method": method,
                         "ablation": ablation})


def member_rows(members: Sequence[Node], method: str, stages_by_class: Mapping[str, set[str]]) -> pd.DataFrame:
    """One ``in_circuit`` row per circuit member (``head_class`` = its path-patching stages)."""
    return pd.DataFrame({"layer": [n.layer for n in members],
                         "head": [n.head if n.kind == "head" else None for n in members],
                         "node": [n.label for n in members], "component": [n.kind for n in members],
                         "value": 1.0, "metric": IN_CIRCUIT, "method": method,
                         "head_class": [",".join(sorted(c for c, s in stages_by_class.items()
                                                        if n.label in s)) or None for n in members]})


def overlap_rows(circuits: Mapping[str, set[str]], universe: Sequence[str], n_permutations: int, seed: int,
                 head_class: str | None = None) -> pd.DataFrame:
    """Overlap statistics with their permutation baseline for every ordered-by-config pair of tasks."""
    rows = []
    tasks = list(circuits)
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            stats = overlap_permutation_test(circuits[a], circuits[b], universe, n_permutations, seed)
            for key, values in stats.items():
                rows.append({"metric": key, "value": values["observed"], "baseline": values["baseline"],
                             "expected": values["expected"], "p_value": values["p_value"], "task": f"{a}|{b}",
                             "task_a": a, "task_b": b, "size_a": len(circuits[a]), "size_b": len(circuits[b]),
                             "size_both": len(circuits[a] & circuits[b]), "n_universe": len(universe),
                             "n_permutations": n_permutations, "head_class": head_class,
                             "shared": ",".join(sorted(circuits[a] & circuits[b]))})
    return pd.DataFrame(rows)


#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=("stage", "circuit_size", "n_nodes", "n_examples", "size_a", "size_b", "size_both",
                             "n_universe", "n_permutations"),
                       booleans=("in_circuit", "in_stage_circuit", "target_reached"))
