"""Patching machinery shared by circuit analyses: nodes, caches, replacement hooks, gradients.

A *node* is an attention head (its ``hook_z`` slice, i.e. what it writes through ``W_O``) or an
MLP (its ``hook_mlp_out``). Everything here is model plumbing over TransformerLens hook names;
the metrics (normalisations, scores, circuits) live in :mod:`mechbench.analyses.circuits`.

Activations are kept in TransformerLens layout (``z``: ``[batch, pos, head, d_head]``,
``mlp_out``: ``[batch, pos, d_model]``); tensors are right-padded batches whose metric is read at
each example's own end position, so pads (after the end) never matter in a causal model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_finite, check_heads
from mechbench.core.model import HeadMatrix
from mechbench.errors import CapabilityError

Hook = tuple[str, Callable[[Tensor, Any], Tensor | None]]
#: ``metric(logits [batch, pos, vocab]) -> [batch]`` per-example metric (e.g. a logit difference).
Metric = Callable[[Tensor], Tensor]


@dataclass(frozen=True, order=True)
class Node:
    """An attention head (``kind="head"``) or an MLP block (``kind="mlp"``, ``head=-1``)."""

    layer: int
    kind: str = "head"
    head: int = -1

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"

    @property
    def site(self) -> str:
        return "z" if self.kind == "head" else "mlp_out"


def head(layer: int, index: int) -> Node:
    return Node(layer, "head", index)


def mlp(layer: int) -> Node:
    return Node(layer, "mlp", -1)


def has_mlps(model: HookedModel) -> bool:
    """True when the model has MLP blocks with an output hook (attention-only toys have none)."""
    return not getattr(model.bridge.cfg, "attn_only", False) and "blocks.0.hook_mlp_out" in model.bridge.hook_dict


def model_nodes(model: HookedModel, mlps: bool = True) -> list[Node]:
    """Every head (layer-major) and, with ``mlps`` and when the model has them, every MLP after its layer's heads."""
    nodes = []
    for layer in range(model.n_layers):
        nodes += [head(layer, h) for h in range(model.n_heads)]
        if mlps and has_mlps(model):
            nodes.append(mlp(layer))
    return nodes


def node_hook_names(model: HookedModel, nodes: Iterable[Node]) -> list[str]:
    """The distinct hook names the nodes live at, in layer order."""
    return sorted({model.hook_name(n.site, n.layer) for n in nodes}, key=lambda name: (int(name.split(".")[1]), name))


# ---------------------------------------------------------------------------- forward passes
def forward(model: HookedModel, tokens: Tensor, hooks: Sequence[Hook] = (), grad: bool = False) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of one pass with forward hooks; ``grad`` keeps the autograd graph."""
    with torch.set_grad_enabled(grad):
        return model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=list(hooks))


def cache(model: HookedModel, tokens: Tensor, names: Iterable[str],
          hooks: Sequence[Hook] = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """``(logits, {hook name: activation})`` of one pass (no gradients), after any ``hooks`` ran; NaN or
    inf in either is a NonFiniteError."""
    store: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[[Tensor, Any], None]:
        # keyed by the name asked for: the bridge reports aliases (hook_q) under their canonical names
        def keep(activation: Tensor, hook: Any) -> None:
            check_finite(activation, name, model.name)
            store[name] = activation.detach().clone()
        return keep

    logits = forward(model, tokens, [*hooks, *((name, keeper(name)) for name in names)])
    check_finite(logits, "the logits", model.name)
    return logits.detach(), store


def _graph_start(model: HookedModel) -> Hook:
    """A hook at the first residual that makes it require grad: frozen weights or a replaced input would
    otherwise leave no graph to differentiate."""

    def ensure_grad(activation: Tensor, hook: Any) -> Tensor:
        return activation if activation.requires_grad else activation.detach().requires_grad_(True)

    return model.hook_name("resid_pre", 0), ensure_grad


def _keepers(saved: dict[str, Tensor], names: Iterable[str], own_copy: bool = False) -> list[Hook]:
    """Hooks saving each named activation into ``saved`` (for gradients w.r.t. it) and returning it.

    Returned, not just read: the bridge may hand a hook a reshaped view and, when the hook returns
    None, go on with the original tensor, which would cut the saved view out of the graph. With
    ``own_copy`` the hook returns (and saves) a clone, so that the component reading the hook's output
    has a tensor of its own: TransformerLens 4.x runs ``hook_mlp_in`` as a pre-hook of ``ln2`` on the
    residual tensor itself, whose gradient would also carry the skip path past the MLP (issue 27).
    """

    def keeper(name: str) -> Callable[[Tensor, Any], Tensor]:
        def keep(activation: Tensor, hook: Any) -> Tensor:
            saved[name] = activation.clone() if own_copy else activation
            return saved[name]
        return keep

    return [(name, keeper(name)) for name in dict.fromkeys(names)]


def cache_with_grads(model: HookedModel, tokens: Tensor, names: Sequence[str], metric: Metric,
                     hooks: Sequence[Hook] = ()) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``(metric [batch], activations, gradients of metric.sum() w.r.t. them)``: one forward + one backward.

    Gradients are taken with ``torch.autograd.grad`` on the hooked activations only, so no
    parameter ``.grad`` is accumulated.
    """
    saved: dict[str, Tensor] = {}
    with torch.enable_grad():
        logits = forward(model, tokens, [*hooks, _graph_start(model), *_keepers(saved, names)], grad=True)
        values = metric(logits)
        grads = torch.autograd.grad(values.sum(), [saved[name] for name in names], allow_unused=True)
    acts = {name: saved[name].detach() for name in names}
    out = {name: (torch.zeros_like(acts[name]) if g is None else g.detach()) for name, g in zip(names, grads,
                                                                                                strict=True)}
    return values.detach(), acts, out


# ---------------------------------------------------------------------------- replacement hooks
def _mask(positions: Tensor | None, activation: Tensor) -> Tensor | None:
    """``positions`` ``[batch, pos]`` bool (which positions to replace) broadcast to the activation."""
    if positions is None:
        return None
    mask = positions.to(activation.device)[:, : activation.shape[1]]
    return mask.reshape(*mask.shape, *([1] * (activation.dim() - 2)))


def replace_hook(name: str, source: Tensor, heads: Sequence[int] | None = None,
                 positions: Tensor | None = None) -> Hook:
    """Forward hook setting ``activation[:, :, heads]`` (all of it when ``heads`` is None) to
    ``source`` (same layout, or broadcastable, e.g. a mean ``[head, d]``), at ``positions`` only
    when given (``[batch, pos]`` bool)."""

    def hook(activation: Tensor, hook: Any) -> Tensor:
        patched = activation.clone()
        src = source.to(activation.device, activation.dtype)
        if src.dim() == activation.dim():
            src = src[:, : activation.shape[1]]
        if heads is not None:
            index = list(heads)
            new = src[..., index, :] if src.dim() >= 2 else src
            old = patched[:, :, index]
        else:
            new, old = src, patched
        new = torch.broadcast_to(new, old.shape)
        mask = _mask(positions, old)
        value = new if mask is None else torch.where(mask, new, old)
        if heads is not None:
            patched[:, :, index] = value
        else:
            patched = value
        return patched

    return name, hook


def patch_nodes_hooks(model: HookedModel, nodes: Iterable[Node], source: Mapping[str, Tensor],
                      positions: Tensor | None = None) -> list[Hook]:
    """Hooks replacing each node's activation by its value in ``source`` (hook name → tensor), one
    hook per hook point (the heads of a layer share one)."""
    nodes = list(nodes)
    heads = [(n.layer, n.head) for n in nodes if n.kind == "head"]
    check_heads("patched nodes", [f"L{layer}H{head}" for layer, head in heads], heads, model, error=CapabilityError)
    by_name: dict[str, list[int]] = {}
    for node in nodes:
        by_name.setdefault(model.hook_name(node.site, node.layer), []).append(node.head)
    hooks = []
    for name, indices in by_name.items():
        hooks.append(replace_hook(name, source[name], None if indices == [-1] else sorted(indices), positions))
    return hooks


def mean_activations(acts: Mapping[str, Tensor], lengths: Tensor) -> dict[str, Tensor]:
    """Per hook point, the activation averaged over examples and their real positions (``[head, d]`` or ``[d]``).

    This is the "mean" of mean ablation: a node replaced by it carries the dataset's average
    output and no example-specific information.
    """
    means = {}
    for name, value in acts.items():
        valid = (torch.arange(value.shape[1])[None, :] < lengths[:, None]).to(value.dtype)
        weights = valid.reshape(*valid.shape, *([1] * (value.dim() - 2)))
        means[name] = (value * weights).sum((0, 1)) / weights.sum()
    return means


# ---------------------------------------------------------------------------- weights
def head_output_weights(model: HookedModel, layer: int) -> Tensor:
    """``W_O`` of a layer as ``[head, d_head, d_model]`` (query-head index)."""
    w_o = model.head_weight(layer, "O")
    if w_o.dim() != 3:
        raise CapabilityError(f"{model.name}: cannot read per-head W_O of layer {layer} (shape {tuple(w_o.shape)})")
    return w_o.detach()


def head_results(model: HookedModel, z: Tensor, layer: int) -> Tensor:
    """What each head writes to the residual stream: ``z[b, p, h] @ W_O[h]`` → ``[batch, pos, head, d_model]``."""
    return torch.einsum("bphd,hdm->bphm", z, head_output_weights(model, layer).to(z.dtype))


def kv_group(model: HookedModel) -> int:
    """Query heads per KV head (1 without GQA)."""
    return model.n_heads // model.architecture.n_kv_heads


# ---------------------------------------------------------------------------- reader-input gradients
def supports_split_inputs(model: HookedModel) -> bool:
    """Whether the bridge can give each head its own copy of the residual input (``hook_q_input`` ...)."""
    try:
        model.bridge.set_use_split_qkv_input(True)
    except (ValueError, RuntimeError, NotImplementedError):  # the bridge names its attention class
        return False
    model.bridge.set_use_split_qkv_input(False)
    return True


def _final_reader(model: HookedModel) -> str:
    return "ln_final.hook_in" if "ln_final.hook_in" in model.bridge.hook_dict else \
        model.hook_name("resid_post", model.n_layers - 1)


def _mlp_reader(model: HookedModel, layer: int, split: bool) -> str:
    return f"blocks.{layer}.hook_mlp_in" if split else f"blocks.{layer}.ln2.hook_in"


def _reader_sites(model: HookedModel, layer: int, split: bool, with_mlps: bool) -> dict[str, str]:
    """Hook names of a layer's readers: ``q``/``k``/``v`` (per-head inputs when ``split``, else the
    projections, with ``ln_in``/``ln_out`` of the layer norm to differentiate through) and ``mlp``."""
    if split:
        entry = {c: f"blocks.{layer}.hook_{c}_input" for c in ("q", "k", "v")}
    else:
        entry = {c: model.hook_name(c, layer) for c in ("q", "k", "v")}
        ln_in, ln_out = f"blocks.{layer}.ln1.hook_in", f"blocks.{layer}.ln1.hook_out"
        if model.has_hook(ln_in) and model.has_hook(ln_out):
            entry.update(ln_in=ln_in, ln_out=ln_out)
    if with_mlps:
        entry["mlp"] = _mlp_reader(model, layer, split)
    return entry


#: the per-head weight matrix behind each reader channel
_CHANNEL_MATRIX: dict[str, HeadMatrix] = {"q": "Q", "k": "K", "v": "V"}


def _head_input_gradient(model: HookedModel, layer: int, channel: str, grad: Tensor, entry: Mapping[str, str],
                         saved: Mapping[str, Tensor], split: bool) -> Tensor:
    """``[batch, pos, query head, d_model]``: each head's input gradient of one channel (q, k or v), from the
    gradient read at the channel's hook; without split inputs, back through ``W_{Q,K,V}`` and the layer
    norm head by head. A KV head's gradient is shared equally by the query heads of its group."""
    group = model.n_heads // grad.shape[2]
    if not split:
        weight = model.head_weight(layer, _CHANNEL_MATRIX[channel]).detach()
        per_head = []
        for h in range(grad.shape[2]):
            w = weight[h] if weight.shape[0] == grad.shape[2] else weight[h * group]
            y = grad[:, :, h] @ w.T.to(grad.dtype)
            if "ln_in" in entry:
                y = torch.autograd.grad(saved[entry["ln_out"]], saved[entry["ln_in"]], y, retain_graph=True)[0]
            per_head.append(y)
        grad = torch.stack(per_head, dim=2)
    if group > 1:
        grad = grad.repeat_interleave(group, dim=2) / group
    return grad.detach()


@contextlib.contextmanager
def split_reader_inputs(model: HookedModel, mlp_input: bool = True) -> Iterator[None]:
    """Inside: every head's q/k/v input (``hook_{q,k,v}_input``, one copy of the residual per head) and,
    with ``mlp_input``, each MLP's input (``hook_mlp_in``) are hook points of their own."""
    if not supports_split_inputs(model):
        raise CapabilityError(f"{model.name}: the bridge cannot give each head its own input (split q/k/v "
                              "inputs); reader-level patching needs a Hugging Face model")
    model.bridge.set_use_split_qkv_input(True)
    if mlp_input:
        model.bridge.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.bridge.set_use_split_qkv_input(False)
        if mlp_input:
            model.bridge.set_use_hook_mlp_in(False)


def reader_shift_hook(model: HookedModel, reader: str, shift: Tensor) -> Hook:
    """A hook (inside :func:`split_reader_inputs`) that adds ``shift`` ``[batch, pos, d_model]`` to one
    reader's own input: ``L{l}H{h}.{q,k,v}`` (that head's copy), ``MLP{l}`` or ``logits`` (the final
    residual); everything else keeps the clean residual. The hook returns a new tensor, so the residual
    stream the bridge carries on is not changed."""
    if reader == "logits":
        name, head = _final_reader(model), None
    elif reader.startswith("MLP"):
        name, head = f"blocks.{int(reader[3:])}.hook_mlp_in", None
    else:
        layer_head, channel = reader.split(".")
        layer, index = (int(part) for part in layer_head[1:].split("H"))
        name, head = f"blocks.{layer}.hook_{channel}_input", index

    def hook(activation: Tensor, hook: Any) -> Tensor:
        added = shift.to(activation.device, activation.dtype)[:, : activation.shape[1]]
        if head is None:
            return activation + added
        if activation.shape[2] != model.n_heads:
            group = model.n_heads // activation.shape[2]
            raise CapabilityError(f"{model.name}: {reader} reads a KV head shared by {group} query heads (GQA); "
                                  "patching one query head's k/v input is undefined")
        patched = activation.clone()
        patched[:, :, head] = patched[:, :, head] + added
        return patched

    return name, hook


def reader_gradients(model: HookedModel, tokens: Tensor, metric: Metric, hooks: Sequence[Hook] = (),
                     mlps: bool = True) -> Tensor:
    """Gradient of ``metric(logits).sum()`` w.r.t. each *reader's own input* ``[batch, pos, reader, d_model]``.

    Readers, in order: per layer each head's q, k, v input (``head * 3 + channel``), the MLP input
    (with ``mlps`` and when the model has MLPs), then the final residual (the logits' input). A
    reader's input is the residual stream as only that reader sees it, so its gradient carries no
    effect through other components (Syed et al. 2023; EAP-IG's split q/k/v inputs).

    With bridges that support per-head inputs (``set_use_split_qkv_input``) the gradients are read
    at ``hook_{q,k,v}_input`` and ``hook_mlp_in``; otherwise (TransformerLens-native toy bridges)
    each head's input gradient is ``J_ln1^T (∂m/∂q_h W_Q[h]^T)`` (likewise for k, v), the layer
    norm's vector-Jacobian product taken by autograd from ``ln1.hook_in`` to ``ln1.hook_out``, and
    the MLP's at ``ln2.hook_in``. Under GQA a KV head's input gradient is split equally among the
    query heads of its group.

    Every reader's hook hands on a clone of its input, the tensor that only the reader uses: at
    ``hook_mlp_in`` (and ``ln2.hook_in``) the bridge passes the residual tensor itself, and the
    gradient w.r.t. it is the sum over everything downstream of that residual (the MLP, later heads
    and MLPs, the logits), not the MLP's own input gradient.
    """
    with_mlps = mlps and has_mlps(model)
    split = supports_split_inputs(model)
    per_layer = [_reader_sites(model, layer, split, with_mlps) for layer in range(model.n_layers)]
    names = [name for entry in per_layer for name in entry.values()]
    final = _final_reader(model)
    names.append(final)
    saved: dict[str, Tensor] = {}
    with split_reader_inputs(model, with_mlps) if split else contextlib.nullcontext(), torch.enable_grad():
        logits = forward(model, tokens, [*hooks, _graph_start(model), *_keepers(saved, names, own_copy=True)],
                         grad=True)
        targets = [saved[e[c]] for e in per_layer for c in ("q", "k", "v")]
        targets += [saved[e["mlp"]] for e in per_layer if "mlp" in e] + [saved[final]]
        grads = list(torch.autograd.grad(metric(logits).sum(), targets, retain_graph=not split,
                                         allow_unused=True))
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads, strict=True)]
        qkv, rest = grads[:3 * model.n_layers], grads[3 * model.n_layers:]
        parts = []
        for layer, entry in enumerate(per_layer):
            channels = [_head_input_gradient(model, layer, channel, qkv[3 * layer + c_index].detach(), entry,
                                             saved, split) for c_index, channel in enumerate(("q", "k", "v"))]
            parts.append(torch.stack(channels, dim=3).flatten(2, 3))
            if "mlp" in entry:
                parts.append(rest.pop(0).detach()[:, :, None])
        parts.append(rest.pop(0).detach()[:, :, None])
    return torch.cat(parts, dim=2)
