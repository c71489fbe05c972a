"""Circuit discovery and circuit overlap across tasks (IOI, Colored Objects, induction, user pairs).

Definitions and user docs: ``docs/metrics/circuits.md``.
Every method scores the components of a model on a *pair task* (clean/corrupt prompts, answer and
wrong-answer tokens; :mod:`mechbench.tasks.circuit_tasks`) with the logit difference
``LD = logit(answer) - logit(wrong)`` at the end position (Wang et al. 2022, arXiv 2211.00593):

* **activation patching** of each node (head ``hook_z``, MLP ``hook_mlp_out``), *noising* (clean
  run, node from the corrupt run) and *denoising* (corrupt run, node from the clean run), with the
  normalised metric (:func:`normalised_patching`);
* **attribution patching** (Nanda 2023): ``(a_corrupt - a_clean) · ∂LD/∂a`` for all nodes from two
  forward passes and one backward pass, normalised like noising;
* **direct logit attribution** (Lieberum et al. 2023, arXiv 2307.09458): each node's output at the
  end position through the final norm with its scale frozen at the clean value, on the
  ``W_U[:, answer] - W_U[:, wrong]`` direction;
* **path patching** as in ``jmerullo/circuit_reuse`` ``patching_utils.path_patching`` (Merullo et al.
  2024, arXiv 2310.08744): sender head from the corrupt run with every other head (and MLP) frozen
  to its clean value, the receivers' q/k/v (or the logits) recomputed, normalised like noising;
  stage by stage (logits → top senders → their senders ...), the circuit = the union of the top
  p % per stage;
* **EAP** (Syed et al. 2023, arXiv 2310.10348) and **EAP-IG** (Hanna et al. 2024, arXiv 2403.17806,
  ``hannamw/EAP-IG`` ``attribute.py``): edge scores ``(out_u^corrupt - out_u^clean) · ∂LD/∂in_v``
  between every upstream node (input embedding, heads, MLPs) and every downstream input (each
  head's q, k, v input, each MLP, the logits); EAP-IG averages the gradient over ``steps`` inputs
  interpolated between the corrupt and clean embeddings.

Circuits are chosen by a rule (:func:`select_top`), scored by faithfulness with the non-circuit
nodes mean-ablated (:func:`faithfulness`), and compared across tasks (:func:`overlap`) against a
permutation baseline (:func:`overlap_permutation_test`).
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.circuits.config import (
    METHODS,
    Ablation,
    CircuitsConfig,
    Method,
    check_config,
)
from mechbench.analyses.circuits.methods import (
    Receiver,
    _channel_hook_name,
    _channel_index,
    _frozen_final_norm_hooks,
    _writer_outputs,
    ablated_logit_diff,
    ablated_logit_diffs,
    activation_patching,
    attribution_patching,
    baseline,
    chunks,
    direct_logit_attributions,
    downstream_labels,
    edge_attribution,
    edge_mask,
    end_positions,
    exact_edge_patching,
    pair_metric,
    path_patch,
    path_patching_scores,
    path_patching_stages,
    senders_for,
    upstream_labels,
)
from mechbench.analyses.circuits.metrics import (
    INPUT,
    LOGITS,
    CircuitRule,
    Direction,
    attribution_scores,
    curve_sizes,
    direct_logit_attribution,
    edge_nodes,
    faithfulness,
    logit_diff,
    normalised_patching,
    overlap,
    overlap_permutation_test,
    select_top,
    smallest_faithful,
)
from mechbench.analyses.circuits.rows import (
    ACT_PATCH_DENOISING,
    ACT_PATCH_NOISING,
    ANALYSIS,
    ATTR_PATCH,
    COLUMNS,
    DLA,
    FAITHFULNESS_CURVE,
    PATH_PATCH,
    _node_rows,
    curve_rows,
    overlap_rows,
)
from mechbench.analyses.circuits.runner import (
    load_tasks,
    run_circuits,
    run_circuits_from_config,
    task_circuit,
)

__all__ = [
    "ACT_PATCH_DENOISING",
    "ACT_PATCH_NOISING",
    "ANALYSIS",
    "ATTR_PATCH",
    "COLUMNS",
    "DLA",
    "FAITHFULNESS_CURVE",
    "INPUT",
    "LOGITS",
    "METHODS",
    "PATH_PATCH",
    "SPEC",
    "Ablation",
    "CircuitRule",
    "CircuitsConfig",
    "Direction",
    "Method",
    "Receiver",
    "_channel_hook_name",
    "_channel_index",
    "_frozen_final_norm_hooks",
    "_node_rows",
    "_writer_outputs",
    "ablated_logit_diff",
    "ablated_logit_diffs",
    "activation_patching",
    "attribution_patching",
    "attribution_scores",
    "baseline",
    "check_config",
    "chunks",
    "curve_rows",
    "curve_sizes",
    "direct_logit_attribution",
    "direct_logit_attributions",
    "downstream_labels",
    "edge_attribution",
    "edge_mask",
    "edge_nodes",
    "end_positions",
    "exact_edge_patching",
    "faithfulness",
    "load_tasks",
    "logit_diff",
    "normalised_patching",
    "overlap",
    "overlap_permutation_test",
    "overlap_rows",
    "pair_metric",
    "path_patch",
    "path_patching_scores",
    "path_patching_stages",
    "run_circuits",
    "run_circuits_from_config",
    "select_top",
    "senders_for",
    "smallest_faithful",
    "task_circuit",
    "upstream_labels",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="circuit discovery on clean/corrupt pair tasks (IOI, Colored Objects): activation and "
                "attribution patching, direct logit attribution, path patching, EAP / EAP-IG; circuits, "
                "faithfulness and overlap across tasks with a permutation baseline",
    citation="Merullo, Eickhoff, Pavlick 2024, Circuit Component Reuse Across Tasks in Transformer Language "
             "Models (arXiv 2310.08744); Wang et al. 2022 (arXiv 2211.00593)",
    config_model=CircuitsConfig,
    run=run_circuits_from_config,
    headline_metrics=(ACT_PATCH_NOISING, ACT_PATCH_DENOISING, ATTR_PATCH, PATH_PATCH, DLA),
    check=check_config,
    figures="mechbench.analyses.circuits.figures",
    columns=COLUMNS,
)
