"""Runners of the circuits analysis: every configured method on each task, its circuit and faithfulness,
and the overlap of every two tasks' circuits, as tidy rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from torch import Tensor

from mechbench.analyses.circuits.config import CircuitsConfig, check_config
from mechbench.analyses.circuits.methods import (
    ablated_logit_diffs,
    activation_patching,
    attribution_patching,
    baseline,
    direct_logit_attributions,
    downstream_labels,
    edge_attribution,
    path_patching_stages,
    upstream_labels,
)
from mechbench.analyses.circuits.metrics import (
    FAITHFULNESS_NORMALISED,
    curve_sizes,
    edge_nodes,
    faithfulness,
    select_top,
    smallest_faithful,
)
from mechbench.analyses.circuits.rows import (
    ACT_PATCH,
    ANALYSIS,
    ATTR_PATCH,
    COLUMNS,
    DLA,
    EAP,
    EAP_IG,
    _node_rows,
    baseline_rows,
    curve_rows,
    edge_rows,
    faithfulness_rows,
    member_rows,
    overlap_rows,
    stage_rows,
)
from mechbench.core import patching
from mechbench.core.hooked import HookedModel
from mechbench.core.patching import Node
from mechbench.core.tidy import finish_rows
from mechbench.tasks.circuit_tasks import PairTokens, make_task, tokenize_pairs


# ---------------------------------------------------------------------------- runner
def _node_method_rows(model: HookedModel, pairs: PairTokens, nodes: Sequence[Node], config: CircuitsConfig,
                      progress: bool) -> tuple[list[pd.DataFrame], dict[str, Tensor]]:
    """Rows of the node methods (activation / attribution patching, DLA) and each method's node scores
    (activation patching: its first direction)."""
    frames = []
    node_scores: dict[str, Tensor] = {}
    for method in config.methods:
        if method == "activation_patching":
            for direction in config.directions:
                scores = activation_patching(model, pairs, nodes, direction, config.batch_size, progress)
                node_scores.setdefault(method, scores)
                frames.append(_node_rows(nodes, scores, ACT_PATCH[direction], method=method,
                                         direction=direction))
        elif method == "attribution_patching":
            node_scores[method] = attribution_patching(model, pairs, nodes, config.batch_size)
            frames.append(_node_rows(nodes, node_scores[method], ATTR_PATCH, method=method, direction="noising"))
        elif method == "dla":
            node_scores[method] = direct_logit_attributions(model, pairs, nodes, config.batch_size)
            frames.append(_node_rows(nodes, node_scores[method], DLA, method=method))
    return frames, node_scores


def _path_patching_rows(model: HookedModel, pairs: PairTokens, config: CircuitsConfig, progress: bool
                        ) -> tuple[list[pd.DataFrame], dict[str, set[str]]]:
    """Rows of every path-patching stage and the heads chosen at each (``stage0``, ``stage1`` ...)."""
    stages = path_patching_stages(model, pairs, config.stages, config.rule, config.rule_value, config.channels,
                                  config.freeze_mlps, config.position, config.batch_size, progress)
    frames = []
    stages_by_class: dict[str, set[str]] = {}
    for index, stage in enumerate(stages):
        chosen = {n.label for n in stage["chosen"]}
        frames.append(stage_rows(index, stage, chosen))
        stages_by_class[f"stage{index}"] = chosen
    return frames, stages_by_class


def _edge_method_rows(model: HookedModel, pairs: PairTokens, config: CircuitsConfig, gap: float
                      ) -> tuple[list[pd.DataFrame], dict[str, dict[tuple[str, str], float]]]:
    """Rows of the edge methods (EAP, EAP-IG) and each method's edge scores ``{(sender, receiver): score}``."""
    frames = []
    tables: dict[str, dict[tuple[str, str], float]] = {}
    for method in (EAP, EAP_IG):
        if method not in config.methods:
            continue
        scores = edge_attribution(model, pairs, method, config.ig_steps, config.mlps, config.batch_size)
        up, down = upstream_labels(model, config.mlps), downstream_labels(model, config.mlps)
        table = {(u, d): float(scores[i, j]) for i, u in enumerate(up) for j, d in enumerate(down)
                 if not math.isnan(float(scores[i, j]))}
        kept = set(select_top(table, config.edge_rule, config.edge_rule_value))
        frames.append(edge_rows(table, kept, gap, method))
        tables[method] = table
    return frames, tables


def _ranked_circuits(config: CircuitsConfig, node_scores: dict[str, Tensor],
                     edge_tables: dict[str, dict[tuple[str, str], float]],
                     nodes: Sequence[Node]) -> tuple[list[set[str]], list[int]]:
    """The circuits (node labels) of the circuit method's top-k items at each size of the faithfulness
    curve, and those sizes: top-k edges' nodes for eap/eap_ig, top-k nodes for node methods."""
    if config.circuit_method in edge_tables:
        edges = select_top(edge_tables[config.circuit_method], "top_k", len(edge_tables[config.circuit_method]))
        sizes = curve_sizes(len(edges), config.curve_points)
        return [edge_nodes(edges[:k]) for k in sizes], sizes
    table = {n.label: float(s) for n, s in zip(nodes, node_scores[config.circuit_method], strict=True)}
    ranked = select_top(table, "top_k", len(table))
    sizes = curve_sizes(len(ranked), config.curve_points)
    return [set(ranked[:k]) for k in sizes], sizes


def task_circuit(model: HookedModel, pairs: PairTokens, config: CircuitsConfig, progress: bool = False
                 ) -> tuple[pd.DataFrame, set[str], dict[str, set[str]]]:
    """All configured scores of one task as tidy rows, its circuit (node labels) and, for path
    patching, the heads chosen at each stage (the head classes used for per-class overlap)."""
    nodes = patching.model_nodes(model, mlps=config.mlps)
    task = pairs.name
    names = patching.node_hook_names(model, nodes)
    base = baseline(model, pairs, names)
    clean, corrupt = base["clean"], base["corrupt"]
    frames = baseline_rows(pairs, clean, corrupt, base["top1"])
    node_frames, node_scores = _node_method_rows(model, pairs, nodes, config, progress)
    frames += node_frames
    stages_by_class: dict[str, set[str]] = {}
    circuit: set[str] = set()
    if "path_patching" in config.methods:
        stage_frames, stages_by_class = _path_patching_rows(model, pairs, config, progress)
        frames += stage_frames
        if config.circuit_method == "path_patching":
            circuit = set().union(*stages_by_class.values()) if stages_by_class else set()
    edge_frames, edge_tables = _edge_method_rows(model, pairs, config, float(clean.mean() - corrupt.mean()))
    if config.circuit_method in edge_tables:
        edge_table = edge_tables[config.circuit_method]
        circuit = edge_nodes(select_top(edge_table, config.edge_rule, config.edge_rule_value))
    frames += edge_frames
    if config.circuit_method in node_scores:
        node_table = {n.label: float(s) for n, s in zip(nodes, node_scores[config.circuit_method], strict=True)}
        circuit = set(select_top(node_table, config.rule, config.rule_value))
    full = float(clean.mean())
    curve, sizes = _ranked_circuits(config, node_scores, edge_tables, nodes) if config.wants_curve else ([], [])
    # one call, so the ablation values (corrupt means or caches) are computed once: everything ablated,
    # the rule's circuit (unless a target chooses it from the curve), then each size of the curve
    kept = [[], *([] if config.faithfulness_target is not None else [circuit]), *curve]
    lds = ablated_logit_diffs(model, pairs, [[n for n in nodes if n.label in c] for c in kept], nodes,
                              config.ablation, config.batch_size)
    empty, curve_lds = lds[0], lds[len(kept) - len(curve):]
    if curve:
        frames.append(curve_rows(sizes, [sum(n.label in c for n in nodes) for c in curve], curve_lds, full, empty,
                                 config.circuit_method, config.ablation))
    reached = None
    if config.faithfulness_target is not None:
        normalised = [faithfulness(ld, full, empty)[FAITHFULNESS_NORMALISED] for ld in curve_lds]
        chosen, reached = smallest_faithful(sizes, normalised, config.faithfulness_target)
        circuit, with_circuit = curve[sizes.index(chosen)], curve_lds[sizes.index(chosen)]
    else:
        with_circuit = lds[1]
    members = [n for n in nodes if n.label in circuit]
    scores = faithfulness(with_circuit, full, empty)
    frames.append(faithfulness_rows(scores, with_circuit, empty, len(members), config.circuit_method,
                                    config.ablation, config.faithfulness_target, reached))
    frames.append(member_rows(members, config.circuit_method, stages_by_class))
    frame = pd.concat(frames, ignore_index=True)
    frame["task"] = task
    return frame, circuit, stages_by_class


def run_circuits(model: HookedModel, tasks: Sequence[PairTokens], config: CircuitsConfig | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Scores, circuits, faithfulness per task and the overlap of every two tasks' circuits.

    Rows (``task`` column on per-task rows): ``logit_diff`` per example (``variant`` clean/corrupt),
    ``logit_diff_mean``, ``accuracy`` (LD > 0), ``top1_accuracy``; per node (``layer``, ``head``,
    ``node``, ``component``): ``act_patch_noising``, ``act_patch_denoising``, ``attr_patch``,
    ``dla``, ``path_patch`` (``stage``, ``receivers``, ``in_stage_circuit``); per edge (``sender``,
    ``receiver``): ``eap``, ``eap_ig`` (``normalised``, ``in_circuit``); ``faithfulness``,
    ``faithfulness_normalised``, ``circuit_logit_diff``, ``ablated_logit_diff`` (``circuit_size``);
    ``in_circuit`` per member node (``head_class`` = its path-patching stages); ``overlap_a``,
    ``overlap_b``, ``jaccard`` per task pair (``baseline``, ``expected``, ``p_value``, sizes,
    ``head_class`` for per-stage overlap).
    """
    config = config or CircuitsConfig()
    check_config(config, data=False)
    frames, circuits, classes = [], {}, {}
    for pairs in tasks:
        frame, circuit, stages = task_circuit(model, pairs, config, progress)
        frames.append(frame)
        circuits[pairs.name] = circuit
        classes[pairs.name] = stages
    # the nodes a circuit could have held: path patching scores heads only
    with_mlps = config.mlps and config.circuit_method != "path_patching"
    universe = [n.label for n in patching.model_nodes(model, mlps=with_mlps)]
    if len(circuits) > 1:
        frames.append(overlap_rows(circuits, universe, config.n_permutations, config.seed))
        shared = set.intersection(*(set(c) for c in classes.values()))
        for name in sorted(shared):
            frames.append(overlap_rows({t: c[name] for t, c in classes.items()}, universe, config.n_permutations,
                                       config.seed, head_class=name))
    frame = pd.concat(frames, ignore_index=True)
    frame["rule"], frame["rule_value"] = config.rule, config.rule_value
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


def load_tasks(model: HookedModel, config: CircuitsConfig) -> list[PairTokens]:
    """Generate (or read) and tokenise every configured task for ``model``."""
    return [tokenize_pairs(model, make_task(model, task, config.n_examples, config.seed)) for task in config.tasks]


def run_circuits_from_config(model: HookedModel, config: CircuitsConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: build the tasks for the model, then :func:`run_circuits`."""
    check_config(config)
    return run_circuits(model, load_tasks(model, config), config, progress)

