"""Model-level methods of the circuits analysis: activation and attribution patching, direct logit
attribution, path patching, faithfulness by ablation and EAP / EAP-IG edge attribution on pair tasks."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses.circuits.config import Ablation
from mechbench.analyses.circuits.metrics import (
    INPUT,
    LOGITS,
    CircuitRule,
    Direction,
    attribution_scores,
    logit_diff,
    normalised_patching,
    select_top,
)
from mechbench.core import patching
from mechbench.core.hooked import HookedModel
from mechbench.core.patching import Node
from mechbench.errors import CapabilityError
from mechbench.tasks.circuit_tasks import PairTokens


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
    if not model.has_hook("ln_final.hook_scale"):
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
    final = "ln_final.hook_in" if model.has_hook("ln_final.hook_in") else \
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


def _channel_receivers(receivers: Sequence[Receiver]) -> list[tuple[int, int, str]]:
    """The ``(layer, head, channel)`` receivers of a list that is not ``[LOGITS]`` (it has no other string)."""
    channels = [r for r in receivers if not isinstance(r, str)]
    if len(channels) != len(receivers):
        raise ValueError(f"receivers are either [{LOGITS!r}] or (layer, head, channel) triples, got {list(receivers)}")
    return channels


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
    channels = _channel_receivers(receivers)
    names = sorted({_channel_hook_name(model, layer, channel) for layer, _, channel in channels})
    _, recorded = patching.cache(model, pairs.clean, names, hooks=hooks)
    patch_hooks = []
    for name in names:
        def hook(activation: Tensor, hook: Any, name: str = name) -> Tensor:
            patched = activation.clone()
            for layer, index, channel in channels:
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
    top = max(layer for layer, _, _ in _channel_receivers(receivers))
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
def ablated_logit_diff(model: HookedModel, pairs: PairTokens, keep: Iterable[Node], nodes: Sequence[Node],
                       ablation: Ablation = "mean", batch_size: int = 16) -> float:
    """Mean LD on the clean prompts with every node of ``nodes`` not in ``keep`` ablated.

    ``mean``: replaced by its mean over the corrupt prompts (examples and positions; the reference
    distribution, e.g. ABC prompts for IOI, as in Wang et al.'s mean ablation); ``corrupt``: by its
    value on the example's own corrupt prompt; ``zero``: by 0.
    """
    return ablated_logit_diffs(model, pairs, [keep], nodes, ablation, batch_size)[0]


def ablated_logit_diffs(model: HookedModel, pairs: PairTokens, circuits: Sequence[Iterable[Node]],
                        nodes: Sequence[Node], ablation: Ablation = "mean", batch_size: int = 16) -> list[float]:
    """:func:`ablated_logit_diff` of several circuits, the ablation values (means, corrupt caches)
    computed once for all of them."""
    names = patching.node_hook_names(model, nodes)
    means = _corrupt_means(model, pairs, names, batch_size) if ablation == "mean" else None
    totals = [0.0] * len(circuits)
    for part in chunks(pairs, batch_size):
        if means is not None:
            source = means
        elif ablation == "corrupt":
            source = patching.cache(model, part.corrupt, names)[1]
        else:
            source = {name: torch.zeros(()) for name in names}
        for index, keep in enumerate(circuits):
            kept = set(keep)
            ablate = [n for n in nodes if n not in kept]
            hooks = patching.patch_nodes_hooks(model, ablate, source) if ablate else []
            totals[index] += float(pair_metric(part)(patching.forward(model, part.clean, hooks)).double().sum())
    return [total / len(pairs) for total in totals]


def _corrupt_means(model: HookedModel, pairs: PairTokens, names: Sequence[str], batch_size: int
                   ) -> dict[str, Tensor]:
    """Each hook point's activation averaged over the corrupt prompts' examples and real positions."""
    sums: dict[str, Tensor] = {}
    count = 0
    for part in chunks(pairs, batch_size):
        _, acts = patching.cache(model, part.corrupt, names)
        weight = float((part.end + 1).sum())
        for name, mean in patching.mean_activations(acts, part.end + 1).items():
            sums[name] = sums[name] + mean * weight if name in sums else mean * weight
        count += int((part.end + 1).sum())
    return {name: value / count for name, value in sums.items()}


# ---------------------------------------------------------------------------- EAP / EAP-IG
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


def _writer_names(model: HookedModel, mlps: bool) -> list[str]:
    """The hook points whose activations make the writers' outputs (:func:`_writer_outputs`)."""
    names = [model.hook_name("resid_pre", 0)] + [model.hook_name("z", layer) for layer in range(model.n_layers)]
    if mlps and patching.has_mlps(model):
        names += [model.hook_name("mlp_out", layer) for layer in range(model.n_layers)]
    return names


def _writer_deltas(model: HookedModel, part: PairTokens, writer_names: Sequence[str], mlps: bool
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """``(clean activations, corrupt activations, delta)`` of one batch: ``delta`` ``[batch, pos, upstream,
    d_model]`` is each writer's corrupt minus clean output, zero past each example's end position."""
    _, clean_acts = patching.cache(model, part.clean, writer_names)
    _, corrupt_acts = patching.cache(model, part.corrupt, writer_names)
    delta = _writer_outputs(corrupt_acts, model, mlps) - _writer_outputs(clean_acts, model, mlps)
    valid = (torch.arange(part.clean.shape[1])[None, :] <= part.end[:, None]).to(delta.dtype)
    return clean_acts, corrupt_acts, delta * valid[:, :, None, None]


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
    writer_names = _writer_names(model, mlps)
    embed = model.hook_name("resid_pre", 0)
    total = torch.zeros(len(upstream_labels(model, mlps)), len(downstream_labels(model, mlps)), dtype=torch.float64)
    for part in chunks(pairs, batch_size):
        clean_acts, corrupt_acts, delta = _writer_deltas(model, part, writer_names, mlps)
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
        if grad_sum is None:  # no integration points
            raise ValueError(f"edge_attribution: {method} needs steps >= 1, got {steps}")
        total += torch.einsum("bpum,bpdm->ud", delta.double(), grad_sum.double() / len(alphas))
    scores = total / len(pairs)
    return torch.where(edge_mask(model, mlps), scores, torch.full_like(scores, float("nan")))



def exact_edge_patching(model: HookedModel, pairs: PairTokens, mlps: bool = True, batch_size: int = 16,
                        max_edges: int = 5000) -> Tensor:
    """Exact edge patching ``[upstream, downstream]`` (NaN where no edge), mean over examples: the change in
    LD on the clean prompt when reader ``v`` alone sees writer ``u``'s corrupt output instead of its clean
    one, ``LD(clean; in_v + out_u^corrupt - out_u^clean) - LD(clean)`` (``get_scores_exact`` of
    ``hannamw/EAP-IG``): the ground truth EAP and EAP-IG approximate to first order. One forward per edge
    and batch, so only for small models: more than ``max_edges`` edges is a CapabilityError; needs a bridge
    with per-head inputs (Hugging Face models) and, for k/v readers, no GQA."""
    up, down = upstream_labels(model, mlps), downstream_labels(model, mlps)
    mask = edge_mask(model, mlps)
    n_edges = int(mask.sum())
    if n_edges > max_edges:
        raise CapabilityError(f"{model.name}: exact edge patching would take {n_edges} forward passes per batch "
                              f"(max_edges {max_edges}); use eap / eap_ig, or raise max_edges on a small model")
    writer_names = _writer_names(model, mlps)
    total = torch.zeros(len(up), len(down), dtype=torch.float64)
    for part in chunks(pairs, batch_size):
        _, _, delta = _writer_deltas(model, part, writer_names, mlps)
        metric = pair_metric(part)
        with patching.split_reader_inputs(model, mlps and patching.has_mlps(model)):
            base = metric(patching.forward(model, part.clean)).double()
            for i, j in mask.nonzero().tolist():
                hook = patching.reader_shift_hook(model, down[j], delta[:, :, i])
                total[i, j] += float((metric(patching.forward(model, part.clean, [hook])).double() - base).sum())
    scores = total / len(pairs)
    return torch.where(mask, scores, torch.full_like(scores, float("nan")))
