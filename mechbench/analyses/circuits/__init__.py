"""Circuit discovery and circuit overlap across tasks (IOI, Colored Objects, induction, user pairs).

Definitions: ``shared/reference/metrics.md`` §4 and §8; user docs ``docs/metrics/circuits.md``.
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

import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import Seed, StrictModel
from mechbench.core import patching
from mechbench.core.hooked import HookedModel
from mechbench.core.patching import Node
from mechbench.errors import ConfigError
from mechbench.tasks.circuit_tasks import BUILTIN_TASKS, PairTokens, load_pair_file, make_task, tokenize_pairs

ANALYSIS = "circuits"
Direction = Literal["noising", "denoising"]
CircuitRule = Literal["top_k", "top_p", "threshold"]
Method = Literal["activation_patching", "attribution_patching", "dla", "path_patching", "eap", "eap_ig"]
METHODS: tuple[str, ...] = ("activation_patching", "attribution_patching", "dla", "path_patching", "eap", "eap_ig")

# ---------------------------------------------------------------------------- metric functions
def logit_diff(logits: Tensor, end: Tensor, answer: Tensor, wrong: Tensor) -> Tensor:
    """``logit(answer) - logit(wrong)`` at each example's end position (Wang et al. 2022). ``[batch]``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    at_end = logits[rows, end.to(logits.device)]
    return at_end[rows, answer.to(logits.device)] - at_end[rows, wrong.to(logits.device)]


def normalised_patching(patched: Tensor | float, clean: Tensor | float, corrupt: Tensor | float,
                        direction: Direction) -> Tensor:
    """Normalised patching metric (TransformerLens / ARENA conventions, metrics.md §4.3).

    * ``denoising`` (corrupt run, one node restored from the clean run):
      ``(m_patched - m_corrupt) / (m_clean - m_corrupt)``: 0 = no effect, 1 = the node alone restores
      the clean behaviour.
    * ``noising`` (clean run, one node replaced by its corrupt value):
      ``(m_patched - m_clean) / (m_clean - m_corrupt)``: 0 = no effect, -1 = the node alone destroys
      it (the sign convention of the circuit-reuse path patching, ``-score`` of its ``percent change``).

    ``m`` are batch means (the reference normalises means, not per-example ratios).
    """
    patched, clean, corrupt = (torch.as_tensor(x, dtype=torch.float64) for x in (patched, clean, corrupt))
    gap = clean - corrupt
    if direction == "denoising":
        return (patched - corrupt) / gap
    if direction == "noising":
        return (patched - clean) / gap
    raise ValueError(f"direction must be 'noising' or 'denoising', got {direction!r}")


def attribution_scores(delta: Tensor, grad: Tensor, positions: Tensor | None = None) -> Tensor:
    """First-order estimate of patching each node (Nanda 2023, attribution patching).

    ``Δm ≈ (a_corrupt - a_clean) · ∂m/∂a |_clean`` summed over positions and the activation's
    feature dimension. ``delta``, ``grad``: ``[batch, pos, head, d]`` (or ``[batch, pos, d]`` for a
    single node); ``positions`` optional ``[batch, pos]`` bool. Returns ``[batch, head]`` (or ``[batch]``).
    """
    product = (delta * grad).double()
    if positions is not None:
        product = product * positions.reshape(*positions.shape, *([1] * (product.dim() - 2))).double()
    return product.sum(-1).sum(1)


def direct_logit_attribution(results: Tensor, scale: Tensor, direction: Tensor, center: bool) -> Tensor:
    """Direct logit attribution of components at the end position (Lieberum et al. 2023; metrics.md §8).

    ``DLA_c = LN_frozen(o_c) · (W_U[:, answer] - W_U[:, wrong])`` where ``LN_frozen`` divides by the
    final norm's scale of the *full* clean residual (and centres, for LayerNorm), so the DLA of all
    components plus the biases sums to the logit difference. ``results``: ``[batch, component,
    d_model]``; ``scale``: ``[batch]``; ``direction``: ``[batch, d_model]`` (final-norm weight already
    multiplied in). Returns ``[batch, component]``.
    """
    if center:
        results = results - results.mean(-1, keepdim=True)
    return torch.einsum("bcm,bm->bc", results.double(), direction.double()) / scale.double()[:, None]


def rank_scores(scores: Tensor, signed: bool = False) -> Tensor:
    """Importance used to rank nodes/edges: ``|score|`` (default; negative movers count) or the signed score."""
    return scores if signed else scores.abs()


def select_top(scores: Mapping[Any, float], rule: CircuitRule, value: float, signed: bool = False) -> list[Any]:
    """The members of a circuit chosen from ``{item: score}`` by a documented rule.

    * ``top_k``: the ``value`` items with the highest importance;
    * ``top_p``: the top ``value`` percent, ``ceil(value/100 * n)`` items (Merullo et al. 2024 use 2 %
      per path-patching stage);
    * ``threshold``: every item with importance ``>= value``.

    Importance is ``|score|`` unless ``signed``; NaN scores are never chosen; ties keep input order.
    Returns the chosen items, most important first.
    """
    items = [(key, float(s)) for key, s in scores.items() if not math.isnan(float(s))]
    importance = [(key, s if signed else abs(s)) for key, s in items]
    ordered = [key for key, _ in sorted(importance, key=lambda pair: -pair[1])]
    if rule == "top_k":
        return ordered[: int(value)]
    if rule == "top_p":
        return ordered[: math.ceil(value / 100 * len(ordered))]
    if rule == "threshold":
        keep = {key for key, s in importance if s >= value}
        return [key for key in ordered if key in keep]
    raise ValueError(f"rule must be top_k, top_p or threshold, got {rule!r}")


def faithfulness(circuit: float, full: float, empty: float | None = None) -> dict[str, float]:
    """Faithfulness of a circuit (Wang et al. 2022): ``F(C) / F(M)`` with every non-circuit component
    mean-ablated in ``F(C)``; with ``empty`` (``F(∅)``, everything ablated) also the normalised
    ``(F(C) - F(∅)) / (F(M) - F(∅))`` (Hanna et al. 2024's normalised faithfulness)."""
    out = {"faithfulness": circuit / full if full != 0 else float("nan")}
    if empty is not None:
        out["faithfulness_normalised"] = (circuit - empty) / (full - empty) if full != empty else float("nan")
    return out


def overlap(a: Iterable[Any], b: Iterable[Any]) -> dict[str, float]:
    """``|A∩B|/|A|``, ``|A∩B|/|B|`` and Jaccard ``|A∩B|/|A∪B|`` of two circuits (sets of heads or edges).

    Merullo et al. 2024 report the share of the IOI circuit reused by Colored Objects, read here as
    ``|A∩B|/|A|`` with A = IOI [INFERRED: the denominator is not stated in the text read]; the
    other two are reported alongside. Empty sets give NaN.
    """
    a, b = set(a), set(b)
    both = len(a & b)
    nan = float("nan")
    return {"overlap_a": both / len(a) if a else nan, "overlap_b": both / len(b) if b else nan,
            "jaccard": both / len(a | b) if a | b else nan}


def overlap_permutation_test(a: Iterable[Any], b: Iterable[Any], universe: Sequence[Any], n_permutations: int = 1000,
                             seed: int = 0) -> dict[str, dict[str, float]]:
    """Overlap of random sets of the same sizes as A and B drawn from ``universe`` (without replacement,
    independently): the chance level of :func:`overlap`.

    For each statistic returns ``observed``, the permutation ``baseline`` mean, its ``expected`` value
    under independence where closed-form (``|B|/N`` for ``overlap_a``, ``|A|/N`` for ``overlap_b``) and
    the one-sided ``p_value = (1 + #{perm >= observed}) / (1 + n_permutations)``.
    """
    a, b = set(a), set(b)
    pool = list(universe)
    missing = (a | b) - set(pool)
    if missing:
        example = sorted(map(str, missing))[:3]
        raise ValueError(f"{len(missing)} circuit members are not in the universe, e.g. {example}")
    observed = overlap(a, b)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {key: [] for key in observed}
    for _ in range(n_permutations):
        stats = overlap(rng.sample(pool, len(a)), rng.sample(pool, len(b)))
        for key, value in stats.items():
            draws[key].append(value)
    n = len(pool)
    expected = {"overlap_a": len(b) / n, "overlap_b": len(a) / n, "jaccard": float("nan")}
    out = {}
    for key, value in observed.items():
        sample = torch.tensor(draws[key], dtype=torch.float64)
        exceed = int((sample >= value - 1e-12).sum()) if not math.isnan(value) else n_permutations
        out[key] = {"observed": value, "baseline": float(sample.nanmean()) if n_permutations else float("nan"),
                    "expected": expected[key], "p_value": (1 + exceed) / (1 + n_permutations)}
    return out


# ---------------------------------------------------------------------------- model-level methods
def pair_metric(pairs: PairTokens) -> patching.Metric:
    """``logits -> LD [batch]`` for the examples of ``pairs`` (in order)."""
    return lambda logits: logit_diff(logits, pairs.end, pairs.answer, pairs.wrong)


def chunks(pairs: PairTokens, batch_size: int) -> list[PairTokens]:
    return [pairs.subset(slice(i, i + batch_size)) for i in range(0, len(pairs), batch_size)]


def end_positions(pairs: PairTokens) -> Tensor:
    """``[batch, pos]`` bool, True at each example's end position."""
    return torch.arange(pairs.clean.shape[1])[None, :] == pairs.end[:, None]


def baseline(model: HookedModel, pairs: PairTokens, names: Sequence[str]) -> dict[str, Any]:
    """Clean and corrupt logit differences ``[n]``, clean top-1 accuracy ``[n]`` and caches of ``names``."""
    metric = pair_metric(pairs)
    logits, clean_cache = patching.cache(model, pairs.clean, names)
    corrupt_logits, corrupt_cache = patching.cache(model, pairs.corrupt, names)
    rows = torch.arange(len(pairs))
    top1 = logits[rows, pairs.end].argmax(-1).cpu() == pairs.answer
    return {"clean": metric(logits).double().cpu(), "corrupt": metric(corrupt_logits).double().cpu(),
            "top1": top1, "clean_cache": clean_cache, "corrupt_cache": corrupt_cache}


def activation_patching(model: HookedModel, pairs: PairTokens, nodes: Sequence[Node], direction: Direction,
                        batch_size: int = 16, progress: bool = False) -> Tensor:
    """Normalised activation-patching score of each node (one forward per node and batch)."""
    names = patching.node_hook_names(model, nodes)
    totals = torch.zeros(len(nodes), dtype=torch.float64)
    clean_sum = corrupt_sum = 0.0
    for part in chunks(pairs, batch_size):
        base = baseline(model, part, names)
        clean_sum += float(base["clean"].sum())
        corrupt_sum += float(base["corrupt"].sum())
        tokens, source = ((part.clean, base["corrupt_cache"]) if direction == "noising"
                          else (part.corrupt, base["clean_cache"]))
        metric = pair_metric(part)
        for i, node in enumerate(tqdm(nodes, desc=f"activation patching ({direction})", disable=not progress,
                                      leave=False)):
            logits = patching.forward(model, tokens, patching.patch_nodes_hooks(model, [node], source))
            totals[i] += float(metric(logits).double().sum())
    n = len(pairs)
    return normalised_patching(totals / n, clean_sum / n, corrupt_sum / n, direction)


def attribution_patching(model: HookedModel, pairs: PairTokens, nodes: Sequence[Node],
                         batch_size: int = 16) -> Tensor:
    """Attribution-patching estimate of the noising score of each node: per batch one clean forward
    + backward (activations and ``∂LD/∂a``) and one corrupt forward (activations)."""
    names = patching.node_hook_names(model, nodes)
    totals = torch.zeros(len(nodes), dtype=torch.float64)
    clean_sum = corrupt_sum = 0.0
    for part in chunks(pairs, batch_size):
        values, acts, grads = patching.cache_with_grads(model, part.clean, names, pair_metric(part))
        corrupt_logits, corrupt_acts = patching.cache(model, part.corrupt, names)
        clean_sum += float(values.double().sum())
        corrupt_sum += float(pair_metric(part)(corrupt_logits).double().sum())
        for i, node in enumerate(nodes):
            name = model.hook_name(node.site, node.layer)
            delta, grad = corrupt_acts[name] - acts[name], grads[name]
            if node.kind == "head":
                delta, grad = delta[:, :, node.head], grad[:, :, node.head]
            totals[i] += float(attribution_scores(delta, grad).sum())
    n = len(pairs)
    return totals / n / (clean_sum / n - corrupt_sum / n)


def _frozen_final_norm_hooks(model: HookedModel) -> list[patching.Hook]:
    """Detach the final norm's scale so the map residual → logits is linear (DLA's frozen-LN convention)."""
    if "ln_final.hook_scale" not in model.bridge.hook_dict:
        return []
    return [("ln_final.hook_scale", lambda scale, hook: scale.detach())]


def direct_logit_attributions(model: HookedModel, pairs: PairTokens, nodes: Sequence[Node],
                              batch_size: int = 16) -> Tensor:
    """Mean DLA (logit units) of each node at the end position on the clean prompts.

    The gradient of ``LD`` w.r.t. the final residual (``ln_final.hook_in``) with the final norm's
    scale frozen is exactly ``LN_frozen^T (W_U[:, answer] - W_U[:, wrong])``, so ``DLA_c = grad · o_c``
    equals :func:`direct_logit_attribution` for LayerNorm and RMSNorm alike.
    """
    names = patching.node_hook_names(model, nodes)
    final = "ln_final.hook_in" if "ln_final.hook_in" in model.bridge.hook_dict else \
        model.hook_name("resid_post", model.n_layers - 1)
    totals = torch.zeros(len(nodes), dtype=torch.float64)
    for part in chunks(pairs, batch_size):
        with warnings.catch_warnings():  # TransformerLens warns that the (deliberately) edited scale is used
            warnings.filterwarnings("ignore", message="A forward hook edited hook_scale", category=UserWarning)
            _, _, grads = patching.cache_with_grads(model, part.clean, [final], pair_metric(part),
                                                    hooks=_frozen_final_norm_hooks(model))
        _, acts = patching.cache(model, part.clean, names)
        rows = torch.arange(len(part))
        direction = grads[final][rows, part.end]  # [batch, d_model]
        for i, node in enumerate(nodes):
            act = acts[model.hook_name(node.site, node.layer)][rows, part.end]
            output = (act[:, node.head] @ patching.head_output_weights(model, node.layer)[node.head].to(act.dtype)
                      if node.kind == "head" else act)
            totals[i] += float(torch.einsum("bm,bm->b", output.double(), direction.double()).sum())
    return totals / len(pairs)


# ---------------------------------------------------------------------------- path patching
#: A receiver: ``(layer, head, channel)`` with channel ``q``, ``k`` or ``v``; the string ``"logits"``
#: stands for the unembedding (the sender's direct path).
Receiver = tuple[int, int, str] | str
LOGITS = "logits"


def _channel_hook_name(model: HookedModel, layer: int, channel: str) -> str:
    return model.hook_name(channel, layer)


def _channel_index(model: HookedModel, activation: Tensor, head_index: int) -> int:
    """Index into a ``hook_q/k/v`` activation: KV heads under GQA (``[b, p, n_kv, d]``)."""
    return head_index if activation.shape[2] == model.n_heads else head_index // patching.kv_group(model)


def path_patch(model: HookedModel, pairs: PairTokens, sender: Node, receivers: Sequence[Receiver],
               clean_cache: Mapping[str, Tensor], corrupt_cache: Mapping[str, Tensor], freeze_mlps: bool = True,
               positions: Tensor | None = None) -> Tensor:
    """Logit differences ``[batch]`` after patching the path ``sender → receivers`` (circuit-reuse recipe).

    Run 1 (clean input): the sender's output is taken from the corrupt run and every other head (and
    MLP, with ``freeze_mlps``) is frozen to its clean value, so the sender's change reaches the
    receivers only directly; the receivers' q/k/v inputs are recorded. Run 2 (clean input): the
    receivers' q/k/v are replaced by the recorded values. For ``receivers == ["logits"]`` run 1's
    logits are the answer (the sender's direct effect). ``positions`` (``[batch, pos]`` bool) limits
    the sender patch to those positions (None = all; the reference patches the end position).
    Under GQA a k/v receiver patches its KV head, shared by its query-head group.
    """
    z_names = [model.hook_name("z", layer) for layer in range(model.n_layers)]
    frozen: dict[str, Tensor] = {name: clean_cache[name] for name in z_names}
    hooks: list[patching.Hook] = []
    for layer, name in enumerate(z_names):
        if layer == sender.layer and sender.kind == "head":
            mixed = clean_cache[name].clone()
            source = corrupt_cache[name][:, :, sender.head]
            if positions is not None:
                mask = positions[:, : source.shape[1], None]
                source = torch.where(mask, source, mixed[:, :, sender.head])
            mixed[:, :, sender.head] = source
            frozen[name] = mixed
        hooks.append(patching.replace_hook(name, frozen[name]))
    if freeze_mlps and patching.has_mlps(model):
        for layer in range(model.n_layers):
            name = model.hook_name("mlp_out", layer)
            source = clean_cache[name]
            if sender.kind == "mlp" and sender.layer == layer:
                source = corrupt_cache[name] if positions is None else torch.where(
                    positions[:, : source.shape[1], None], corrupt_cache[name], clean_cache[name])
            hooks.append(patching.replace_hook(name, source))
    metric = pair_metric(pairs)
    if list(receivers) == [LOGITS]:
        return metric(patching.forward(model, pairs.clean, hooks)).double().cpu()
    names = sorted({_channel_hook_name(model, layer, channel) for layer, _, channel in receivers})
    _, recorded = patching.cache(model, pairs.clean, names, hooks=hooks)
    patch_hooks = []
    for name in names:
        def hook(activation: Tensor, hook: Any, name: str = name) -> Tensor:
            patched = activation.clone()
            for layer, index, channel in receivers:
                if _channel_hook_name(model, layer, channel) == name:
                    i = _channel_index(model, activation, index)
                    patched[:, :, i] = recorded[name][:, : activation.shape[1], i]
            return patched
        patch_hooks.append((name, hook))
    return metric(patching.forward(model, pairs.clean, patch_hooks)).double().cpu()


def path_patching_scores(model: HookedModel, pairs: PairTokens, senders: Sequence[Node],
                         receivers: Sequence[Receiver], freeze_mlps: bool = True, position: str = "all",
                         batch_size: int = 16, progress: bool = False) -> Tensor:
    """Normalised path-patching score (``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``; -1 = the
    path carries the whole effect) of each sender onto ``receivers``. ``position`` = ``all`` or ``end``."""
    totals = torch.zeros(len(senders), dtype=torch.float64)
    clean_sum = corrupt_sum = 0.0
    names = [model.hook_name("z", layer) for layer in range(model.n_layers)]
    if freeze_mlps and patching.has_mlps(model):
        names += [model.hook_name("mlp_out", layer) for layer in range(model.n_layers)]
    for part in chunks(pairs, batch_size):
        base = baseline(model, part, names)
        clean_sum += float(base["clean"].sum())
        corrupt_sum += float(base["corrupt"].sum())
        mask = end_positions(part) if position == "end" else None
        for i, sender in enumerate(tqdm(senders, desc="path patching", disable=not progress, leave=False)):
            totals[i] += float(path_patch(model, part, sender, receivers, base["clean_cache"], base["corrupt_cache"],
                                          freeze_mlps, mask).sum())
    n = len(pairs)
    return normalised_patching(totals / n, clean_sum / n, corrupt_sum / n, "noising")


def senders_for(model: HookedModel, receivers: Sequence[Receiver], mlps: bool = False) -> list[Node]:
    """Heads (and MLPs) that can reach the receivers: every node for the logits, else the nodes in
    layers before the latest receiver layer (``truncate_to_max_layer``), receivers excluded."""
    nodes = patching.model_nodes(model, mlps=mlps)
    if list(receivers) == [LOGITS]:
        return nodes
    top = max(layer for layer, _, _ in receivers)
    return [n for n in nodes if n.layer < top]


def path_patching_stages(model: HookedModel, pairs: PairTokens, n_stages: int, rule: CircuitRule, value: float,
                         channels: Sequence[str] = ("q", "k", "v"), freeze_mlps: bool = True, position: str = "all",
                         batch_size: int = 16, progress: bool = False) -> list[dict[str, Any]]:
    """Merullo et al.'s iterative search: stage 0 scores every head onto the logits, stage ``s`` every
    earlier head onto the q/k/v of the heads chosen at stage ``s - 1``; each stage keeps the heads
    :func:`select_top` picks. Returns per stage ``{"receivers", "senders", "scores", "chosen"}``."""
    stages: list[dict[str, Any]] = []
    receivers: list[Receiver] = [LOGITS]
    for _ in range(n_stages):
        senders = senders_for(model, receivers)
        if not senders:
            break
        scores = path_patching_scores(model, pairs, senders, receivers, freeze_mlps, position, batch_size, progress)
        chosen = select_top(dict(zip(senders, scores.tolist(), strict=True)), rule, value)
        stages.append({"receivers": list(receivers), "senders": senders, "scores": scores, "chosen": chosen})
        receivers = [(n.layer, n.head, c) for n in chosen for c in channels]
        if not receivers:
            break
    return stages


# ---------------------------------------------------------------------------- faithfulness
Ablation = Literal["mean", "corrupt", "zero"]


def ablated_logit_diff(model: HookedModel, pairs: PairTokens, keep: Iterable[Node], nodes: Sequence[Node],
                       ablation: Ablation = "mean", batch_size: int = 16) -> float:
    """Mean LD on the clean prompts with every node of ``nodes`` not in ``keep`` ablated.

    ``mean``: replaced by its mean over the corrupt prompts (examples and positions; the reference
    distribution, e.g. ABC prompts for IOI, as in Wang et al.'s mean ablation); ``corrupt``: by its
    value on the example's own corrupt prompt; ``zero``: by 0.
    """
    keep = set(keep)
    ablate = [n for n in nodes if n not in keep]
    names = patching.node_hook_names(model, nodes)
    means: dict[str, Tensor] | None = None
    if ablation == "mean":
        sums: dict[str, Tensor] = {}
        count = 0
        for part in chunks(pairs, batch_size):
            _, acts = patching.cache(model, part.corrupt, names)
            for name, mean in patching.mean_activations(acts, part.end + 1).items():
                weight = float((part.end + 1).sum())
                sums[name] = sums.get(name, 0) + mean * weight
            count += int((part.end + 1).sum())
        means = {name: value / count for name, value in sums.items()}
    total = 0.0
    for part in chunks(pairs, batch_size):
        if ablation == "mean":
            source = means
        elif ablation == "corrupt":
            source = patching.cache(model, part.corrupt, names)[1]
        else:
            source = {name: torch.zeros(()) for name in names}
        hooks = patching.patch_nodes_hooks(model, ablate, source) if ablate else []
        total += float(pair_metric(part)(patching.forward(model, part.clean, hooks)).double().sum())
    return total / len(pairs)


# ---------------------------------------------------------------------------- EAP / EAP-IG
INPUT = "input"


def upstream_labels(model: HookedModel, mlps: bool = True) -> list[str]:
    """Upstream (writer) nodes of the edge graph: the input embedding, then per layer its heads and MLP."""
    return [INPUT, *(n.label for n in patching.model_nodes(model, mlps=mlps))]


def downstream_labels(model: HookedModel, mlps: bool = True) -> list[str]:
    """Downstream (reader) inputs: per layer each head's ``q``/``k``/``v`` input (``L1H0.k``), the
    MLP's input, and finally the ``logits``."""
    labels = []
    for layer in range(model.n_layers):
        labels += [f"L{layer}H{h}.{c}" for h in range(model.n_heads) for c in ("q", "k", "v")]
        if mlps and patching.has_mlps(model):
            labels.append(f"MLP{layer}")
    return [*labels, LOGITS]


def edge_mask(model: HookedModel, mlps: bool = True) -> Tensor:
    """``[upstream, downstream]`` bool: True where the writer comes before the reader (a real edge)."""
    up, down = upstream_labels(model, mlps), downstream_labels(model, mlps)

    def order(label: str, reader: bool) -> float:
        if label == INPUT:
            return -1.0
        if label == LOGITS:
            return float(model.n_layers)
        if label.startswith("MLP"):
            return int(label[3:]) + 0.5
        layer = int(label[1:].split("H")[0])
        return layer - 0.25 if reader else float(layer)

    up_order = torch.tensor([order(u, False) for u in up])
    down_order = torch.tensor([order(d, True) for d in down])
    return up_order[:, None] < down_order[None, :]


def _writer_outputs(acts: Mapping[str, Tensor], model: HookedModel, mlps: bool) -> Tensor:
    """``[batch, pos, upstream, d_model]`` outputs of the writers (order of :func:`upstream_labels`)."""
    parts = [acts[model.hook_name("resid_pre", 0)][:, :, None]]
    for layer in range(model.n_layers):
        parts.append(patching.head_results(model, acts[model.hook_name("z", layer)], layer))
        if mlps and patching.has_mlps(model):
            parts.append(acts[model.hook_name("mlp_out", layer)][:, :, None])
    return torch.cat(parts, dim=2)


def edge_attribution(model: HookedModel, pairs: PairTokens, method: Literal["eap", "eap_ig"] = "eap",
                     steps: int = 5, mlps: bool = True, batch_size: int = 16) -> Tensor:
    """Edge scores ``[upstream, downstream]`` (NaN where no edge), mean over examples.

    ``score(u → v) = sum_pos (out_u^corrupt - out_u^clean) · g_v`` with ``g_v`` the gradient of LD
    w.r.t. ``v``'s own input (the per-head q/k/v input, the MLP input, the final-norm input):
    EAP takes it on the clean run; EAP-IG averages it over ``steps`` runs whose input embeddings are
    ``corrupt + k/steps (clean - corrupt)``, ``k = 0..steps-1`` (``get_scores_eap_ig``). Under GQA a
    k/v input belongs to a KV head; its gradient is shared equally by the heads of the group
    [INFERRED]. Normalise by ``LD_clean - LD_corrupt`` to compare with node scores.
    """
    writer_names = [model.hook_name("resid_pre", 0)] + [model.hook_name("z", layer)
                                                         for layer in range(model.n_layers)]
    if mlps and patching.has_mlps(model):
        writer_names += [model.hook_name("mlp_out", layer) for layer in range(model.n_layers)]
    embed = model.hook_name("resid_pre", 0)
    total = torch.zeros(len(upstream_labels(model, mlps)), len(downstream_labels(model, mlps)), dtype=torch.float64)
    for part in chunks(pairs, batch_size):
        _, clean_acts = patching.cache(model, part.clean, writer_names)
        _, corrupt_acts = patching.cache(model, part.corrupt, writer_names)
        delta = _writer_outputs(corrupt_acts, model, mlps) - _writer_outputs(clean_acts, model, mlps)
        valid = (torch.arange(part.clean.shape[1])[None, :] <= part.end[:, None]).to(delta.dtype)
        delta = delta * valid[:, :, None, None]
        metric = pair_metric(part)
        alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]
        grad_sum = None
        for alpha in alphas:
            hooks: list[patching.Hook] = []
            if method == "eap_ig":
                start, stop = corrupt_acts[embed], clean_acts[embed]
                hooks.append(patching.replace_hook(embed, start + alpha * (stop - start)))
            stacked = patching.reader_gradients(model, part.clean, metric, hooks, mlps)
            grad_sum = stacked if grad_sum is None else grad_sum + stacked
        total += torch.einsum("bpum,bpdm->ud", delta.double(), grad_sum.double() / len(alphas))
    scores = total / len(pairs)
    return torch.where(edge_mask(model, mlps), scores, torch.full_like(scores, float("nan")))


def edge_nodes(edges: Iterable[tuple[str, str]]) -> set[str]:
    """Node labels touched by a set of edges (``L1H0.k`` → ``L1H0``; input and logits dropped)."""
    nodes = set()
    for up, down in edges:
        for label in (up, down.split(".")[0]):
            if label not in (INPUT, LOGITS):
                nodes.add(label)
    return nodes


# ---------------------------------------------------------------------------- config
class CircuitsConfig(StrictModel):
    """Options of the ``circuits`` analysis (config block ``analyses.circuits``)."""

    tasks: list[str] = Field(["ioi", "colored_objects"], min_length=1, description="pair tasks: ioi, "
                             "colored_objects, induction (token ids, toy models) or a .jsonl of {clean, corrupt, "
                             "answer, wrong}; overlap is computed between every two")
    n_examples: PositiveInt = Field(16, description="prompt pairs per task (the first N of a user file)")
    methods: list[Method] = Field(list(METHODS), min_length=1, description="node methods (activation_patching, "
                                  "attribution_patching, dla, path_patching) and edge methods (eap, eap_ig)")
    directions: list[Direction] = Field(["noising", "denoising"], min_length=1,
                                        description="activation patching directions")
    mlps: bool = Field(True, description="score MLP blocks as nodes too (models with MLPs)")
    circuit_method: Method = Field("path_patching", description="the method whose scores define each task's "
                                   "circuit (eap/eap_ig: the heads touched by the chosen edges)")
    rule: CircuitRule = Field("top_p", description="circuit rule: top_p (percent per path-patching stage, "
                              "Merullo et al.), top_k, or threshold on |score|")
    rule_value: float = Field(5.0, gt=0, description="p (percent), k, or the threshold")
    edge_rule: CircuitRule = Field("top_k", description="rule for EAP / EAP-IG edges")
    edge_rule_value: float = Field(10, gt=0, description="edges kept (k), percent, or |score| threshold")
    stages: PositiveInt = Field(3, description="path-patching stages (logits, then the senders of each stage)")
    channels: list[Literal["q", "k", "v"]] = Field(["q", "k", "v"], min_length=1,
                                                   description="receiver inputs patched at stages after the first")
    position: Literal["all", "end"] = Field("all", description="positions a path-patching sender is patched "
                                            "at: all, or the end position only (the reference's default)")
    freeze_mlps: bool = Field(True, description="freeze MLP outputs to clean in path patching")
    ablation: Ablation = Field("mean", description="how non-circuit nodes are ablated for faithfulness: mean "
                               "(over the corrupt prompts), corrupt (own corrupt prompt) or zero")
    ig_steps: PositiveInt = Field(5, description="EAP-IG interpolation steps (reference default 30)")
    n_permutations: PositiveInt = Field(1000, description="random head sets for the overlap baseline")
    seed: Seed = Field(0, description="seed of the task generators and the permutation baseline")
    batch_size: PositiveInt = 16

    @model_validator(mode="after")
    def _circuit_method_is_run(self) -> CircuitsConfig:
        if self.circuit_method not in self.methods:
            raise ValueError(f"circuit_method {self.circuit_method!r} must be one of methods {self.methods}")
        return self


def check_config(config: CircuitsConfig, data: bool = True) -> None:
    """Fail before any model is loaded on a rule value out of range or a missing task file."""
    for field, rule, value in (("rule", config.rule, config.rule_value),
                               ("edge_rule", config.edge_rule, config.edge_rule_value)):
        if rule == "top_p" and value > 100:
            raise ConfigError(f"circuits.{field}_value is a percentage for top_p; got {value:g}, use 0 < p <= 100")
        if rule == "top_k" and not float(value).is_integer():  # also refuses inf, which int() cannot convert
            raise ConfigError(f"circuits.{field}_value must be a whole number for top_k; got {value:g}")
    if len(set(config.tasks)) != len(config.tasks):
        raise ConfigError(f"circuits.tasks lists a task twice: {config.tasks}")
    if data:
        for task in config.tasks:
            if task not in BUILTIN_TASKS:
                load_pair_file(task, 1)


# ---------------------------------------------------------------------------- runner
def _node_rows(nodes: Sequence[Node], scores: Tensor, metric: str, **constants: Any) -> pd.DataFrame:
    return pd.DataFrame({"layer": [n.layer for n in nodes], "head": [n.head if n.kind == "head" else None
                                                                     for n in nodes],
                         "node": [n.label for n in nodes], "component": [n.kind for n in nodes],
                         "value": scores.double().tolist(), "metric": metric, **constants})


def task_circuit(model: HookedModel, pairs: PairTokens, config: CircuitsConfig, progress: bool = False
                 ) -> tuple[pd.DataFrame, set[str], dict[str, set[str]]]:
    """All configured scores of one task as tidy rows, its circuit (node labels) and, for path
    patching, the heads chosen at each stage (the head classes used for per-class overlap)."""
    nodes = patching.model_nodes(model, mlps=config.mlps)
    task = pairs.name
    names = patching.node_hook_names(model, nodes)
    base = baseline(model, pairs, names)
    clean, corrupt = base["clean"], base["corrupt"]
    frames = [pd.DataFrame({"example": pairs.example_ids * 2, "value": torch.cat([clean, corrupt]).tolist(),
                            "metric": "logit_diff", "variant": ["clean"] * len(pairs) + ["corrupt"] * len(pairs)}),
              pd.DataFrame({"metric": ["logit_diff_mean", "logit_diff_mean", "accuracy", "top1_accuracy"],
                            "variant": ["clean", "corrupt", "clean", "clean"],
                            "value": [float(clean.mean()), float(corrupt.mean()), float((clean > 0).double().mean()),
                                      float(base["top1"].double().mean())], "n_examples": len(pairs)})]
    node_scores: dict[str, Tensor] = {}
    for method in config.methods:
        if method == "activation_patching":
            for direction in config.directions:
                scores = activation_patching(model, pairs, nodes, direction, config.batch_size, progress)
                node_scores.setdefault(method, scores)
                frames.append(_node_rows(nodes, scores, f"act_patch_{direction}", method=method,
                                         direction=direction))
        elif method == "attribution_patching":
            node_scores[method] = attribution_patching(model, pairs, nodes, config.batch_size)
            frames.append(_node_rows(nodes, node_scores[method], "attr_patch", method=method, direction="noising"))
        elif method == "dla":
            node_scores[method] = direct_logit_attributions(model, pairs, nodes, config.batch_size)
            frames.append(_node_rows(nodes, node_scores[method], "dla", method=method))
    stages_by_class: dict[str, set[str]] = {}
    circuit: set[str] = set()
    if "path_patching" in config.methods:
        stages = path_patching_stages(model, pairs, config.stages, config.rule, config.rule_value, config.channels,
                                      config.freeze_mlps, config.position, config.batch_size, progress)
        for index, stage in enumerate(stages):
            receivers = ",".join(r if isinstance(r, str) else f"L{r[0]}H{r[1]}.{r[2]}" for r in stage["receivers"])
            chosen = {n.label for n in stage["chosen"]}
            rows = _node_rows(stage["senders"], stage["scores"], "path_patch", method="path_patching",
                              stage=index, receivers=receivers)
            rows["in_stage_circuit"] = rows["node"].isin(chosen)
            frames.append(rows)
            stages_by_class[f"stage{index}"] = chosen
        if config.circuit_method == "path_patching":
            circuit = set().union(*stages_by_class.values()) if stages_by_class else set()
    edge_frames = []
    for method in ("eap", "eap_ig"):
        if method not in config.methods:
            continue
        scores = edge_attribution(model, pairs, method, config.ig_steps, config.mlps, config.batch_size)
        up, down = upstream_labels(model, config.mlps), downstream_labels(model, config.mlps)
        gap = float(clean.mean() - corrupt.mean())
        table = {(u, d): float(scores[i, j]) for i, u in enumerate(up) for j, d in enumerate(down)
                 if not math.isnan(float(scores[i, j]))}
        kept = set(select_top(table, config.edge_rule, config.edge_rule_value))
        edge_frames.append(pd.DataFrame({"sender": [u for u, _ in table], "receiver": [d for _, d in table],
                                         "value": list(table.values()),
                                         "normalised": [v / gap if gap else float("nan") for v in table.values()],
                                         "in_circuit": [key in kept for key in table], "metric": method,
                                         "method": method}))
        if config.circuit_method == method:
            circuit = edge_nodes(kept)
    frames += edge_frames
    if config.circuit_method in node_scores:
        table = {n.label: float(s) for n, s in zip(nodes, node_scores[config.circuit_method], strict=True)}
        circuit = set(select_top(table, config.rule, config.rule_value))
    members = [n for n in nodes if n.label in circuit]
    full = float(clean.mean())
    with_circuit = ablated_logit_diff(model, pairs, members, nodes, config.ablation, config.batch_size)
    empty = ablated_logit_diff(model, pairs, [], nodes, config.ablation, config.batch_size)
    scores = faithfulness(with_circuit, full, empty)
    frames.append(pd.DataFrame({"metric": [*scores, "circuit_logit_diff", "ablated_logit_diff"],
                                "value": [*scores.values(), with_circuit, empty], "circuit_size": len(members),
                                "method": config.circuit_method, "ablation": config.ablation}))
    frames.append(pd.DataFrame({"layer": [n.layer for n in members],
                                "head": [n.head if n.kind == "head" else None for n in members],
                                "node": [n.label for n in members], "component": [n.kind for n in members],
                                "value": 1.0, "metric": "in_circuit", "method": config.circuit_method,
                                "head_class": [",".join(sorted(c for c, s in stages_by_class.items()
                                                               if n.label in s)) or None for n in members]}))
    frame = pd.concat(frames, ignore_index=True)
    frame["task"] = task
    return frame, circuit, stages_by_class


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
    for column in ("layer", "head", "stage", "circuit_size", "n_examples", "size_a", "size_b", "size_both",
                   "n_universe", "n_permutations"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    for column in ("in_circuit", "in_stage_circuit"):
        if column in frame:
            frame[column] = frame[column].astype("boolean")
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    frame["rule"], frame["rule_value"] = config.rule, config.rule_value
    return frame


def load_tasks(model: HookedModel, config: CircuitsConfig) -> list[PairTokens]:
    """Generate (or read) and tokenise every configured task for ``model``."""
    return [tokenize_pairs(model, make_task(model, task, config.n_examples, config.seed)) for task in config.tasks]


def run_circuits_from_config(model: HookedModel, config: CircuitsConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: build the tasks for the model, then :func:`run_circuits`."""
    check_config(config)
    return run_circuits(model, load_tasks(model, config), config, progress)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="circuit discovery on clean/corrupt pair tasks (IOI, Colored Objects): activation and "
                "attribution patching, direct logit attribution, path patching, EAP / EAP-IG; circuits, "
                "faithfulness and overlap across tasks with a permutation baseline",
    citation="Merullo, Eickhoff, Pavlick 2024, Circuit Component Reuse Across Tasks in Transformer Language "
             "Models (arXiv 2310.08744); Wang et al. 2022 (arXiv 2211.00593)",
    config_model=CircuitsConfig,
    run=run_circuits_from_config,
    headline_metrics=("act_patch_noising", "act_patch_denoising", "attr_patch", "path_patch", "dla"),
    check=check_config,
    figures="mechbench.analyses.circuits.figures",
)
