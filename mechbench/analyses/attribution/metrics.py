"""Pure metrics of the attribution analysis: targets, captum attribution methods, attention views and rollout,
deletion / insertion curves and grounding shares (tensors in, tensors or numbers out; no model loading, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

Forward = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """Target tokens at input ``positions`` (each predicted from the logits one position earlier).

    ``kind="logprob"``: ``f = sum_i log p(token_ids[i])``; ``kind="logit_diff"``:
    ``f = sum_i logit(token_ids[i]) - logit(foil_ids[i])``.
    """

    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    kind: Literal["logprob", "logit_diff"] = "logprob"
    foil_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.positions or len(self.positions) != len(self.token_ids) or min(self.positions) < 1:
            raise ValueError(f"a target needs one token id per position >= 1, got {self.positions} / {self.token_ids}")
        if self.kind == "logit_diff" and len(self.foil_ids) != len(self.token_ids):
            raise ValueError("a logit-difference target needs one foil id per target token")

    @property
    def first(self) -> int:
        """First target position: the positions before it are the prompt."""
        return min(self.positions)

    @property
    def query_rows(self) -> list[int]:
        """Positions whose logits (and attention rows) the target reads."""
        return [p - 1 for p in self.positions]

    def shifted(self, offset: int) -> Target:
        return replace(self, positions=tuple(p - offset for p in self.positions))


def target_values(logits: Tensor, targets: Sequence[Target]) -> Tensor:
    """``f`` per row of ``logits`` ``[N, pos, vocab]``; row ``i`` uses ``targets[i % len(targets)]``. ``[N]``."""
    values = []
    for row in range(logits.shape[0]):
        target = targets[row % len(targets)]
        rows = torch.tensor(target.query_rows, device=logits.device)
        ids = torch.tensor(target.token_ids, device=logits.device)
        picked = logits[row, rows]
        if target.kind == "logprob":
            values.append(picked.log_softmax(-1).gather(-1, ids[:, None]).sum())
        else:
            foils = torch.tensor(target.foil_ids, device=logits.device)
            values.append((picked.gather(-1, ids[:, None]) - picked.gather(-1, foils[:, None])).sum())
    return torch.stack(values)


# ---------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class Example:
    """One input ``tokens`` (prompt ⊕ target tokens), its target and, for grounding, passage token spans."""

    id: str
    tokens: Tensor
    target: Target
    token_texts: list[str]
    task: str = "prompts"
    passages: tuple[tuple[int, int], ...] = ()
    cited: int | None = None
    target_text: str | None = None

    @property
    def prompt_length(self) -> int:
        return self.target.first


def feature_positions(example: Example, exclude_first: bool) -> Tensor:
    """Positions compared between attention and attribution: the prompt, without position 0 if ``exclude_first``."""
    return torch.arange(1 if exclude_first else 0, example.prompt_length)


# ---------------------------------------------------------------------------- attribution methods
def _leaf(embeddings: Tensor) -> Tensor:
    return embeddings.detach().clone().requires_grad_(True)


def saliency(forward: Forward, embeddings: Tensor) -> Tensor:
    """Gradient saliency ``||df/de_s||_2`` per position (Simonyan et al. 2014; captum ``Saliency``). ``[B, pos]``."""
    from captum.attr import Saliency

    gradient = Saliency(forward).attribute(_leaf(embeddings), abs=False)
    return gradient.norm(dim=-1).detach()


def input_x_gradient(forward: Forward, embeddings: Tensor) -> Tensor:
    """Input x gradient ``sum_d e_sd df/de_sd`` per position (Shrikumar et al. 2016; captum). ``[B, pos]``."""
    from captum.attr import InputXGradient

    return InputXGradient(forward).attribute(_leaf(embeddings)).sum(-1).detach()


def integrated_gradients(forward: Forward, embeddings: Tensor, baselines: Tensor, n_steps: int = 32,
                         method: str = "gausslegendre",
                         internal_batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Integrated gradients per position and the signed completeness error (Sundararajan et al. 2017).

    ``IG_s = sum_d (e_sd - b_sd) int_0^1 df/de_sd(b + a (e - b)) da``, the integral by captum's
    ``method`` rule with ``n_steps`` points. Completeness: ``sum_s IG_s = f(e) - f(b)`` exactly;
    the returned ``delta = sum_s IG_s - (f(e) - f(b))`` measures the quadrature error.
    Returns ``(scores [B, pos], delta [B])``.
    """
    from captum.attr import IntegratedGradients

    attributions, delta = IntegratedGradients(forward).attribute(
        _leaf(embeddings), baselines=baselines, n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
        return_convergence_delta=True)
    return attributions.sum(-1).detach(), delta.reshape(-1).detach()


def converged_integrated_gradients(forward_for: Callable[[Tensor], Forward], embeddings: Tensor, baselines: Tensor,
                                   n_steps: int, tolerance: float, max_steps: int, method: str = "gausslegendre",
                                   internal_batch_size: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`integrated_gradients` with its quadrature error controlled per example.

    The relative completeness error ``|delta| / |f(e) - f(b)|`` (``delta`` as in
    :func:`integrated_gradients`) must be at most ``tolerance``: examples above it are integrated again
    with twice the points, until they meet it or ``max_steps`` points were used. ``forward_for(rows)``
    is the forward of the examples ``rows`` (an index tensor) alone. Returns ``(scores [B, pos],
    delta [B], points [B], converged [B] bool)``; an example that never met the tolerance keeps its
    ``max_steps``-point result and ``converged`` False.
    """
    rows = torch.arange(embeddings.shape[0])
    forward = forward_for(rows)
    with torch.no_grad():
        gap = (forward(embeddings.detach()) - forward(baselines.detach())).abs().clamp_min(1e-12)
    scores, delta = integrated_gradients(forward, embeddings, baselines, n_steps, method, internal_batch_size)
    points = torch.full((len(rows),), n_steps)
    steps = n_steps
    todo = rows[delta.abs() > tolerance * gap]
    while todo.numel() and steps * 2 <= max_steps:
        steps *= 2
        refined, refined_delta = integrated_gradients(forward_for(todo), embeddings[todo], baselines[todo], steps,
                                                      method, internal_batch_size)
        scores[todo], delta[todo], points[todo] = refined, refined_delta, steps
        todo = todo[refined_delta.abs() > tolerance * gap[todo]]
    return scores, delta, points, delta.abs() <= tolerance * gap


def occlusion(forward: Forward, embeddings: Tensor, replacement: Tensor, feature_mask: Tensor,
              perturbations_per_eval: int = 1) -> Tensor:
    """Occlusion effect ``f(e) - f(e with feature k replaced)`` (captum ``FeatureAblation``).

    ``feature_mask`` ``[B, pos]`` gives each position a feature id (a token, or a span sharing one
    id); every position carries its feature's effect. ``replacement`` ``[B, pos, d]``. Returns ``[B, pos]``.
    """
    from captum.attr import FeatureAblation

    ids = torch.unique(feature_mask, return_inverse=True)[1]  # contiguous 0..n-1
    effects = FeatureAblation(forward).attribute(embeddings, baselines=replacement,
                                                 feature_mask=ids[..., None].expand_as(embeddings),
                                                 perturbations_per_eval=perturbations_per_eval)
    return effects[..., 0]


# ---------------------------------------------------------------------------- attention views
def query_view(pattern: Tensor, rows: Sequence[int]) -> Tensor:
    """Attention the target's query ``rows`` pay to each key, averaged over the rows: ``[..., q, k] -> [..., k]``."""
    return pattern[..., list(rows), :].mean(-2)


def attention_rollout(layer_maps: Tensor, residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``R_l = Ahat_l R_{l-1}``, ``Ahat_l = (1 - r) A_l + r I``.

    ``layer_maps`` ``[layer, T, T]`` (head means, rows summing to 1). Returns the cumulative rollout
    through each layer ``[layer, T, T]`` (rows still sum to 1).
    """
    n = layer_maps.shape[-1]
    eye = torch.eye(n, dtype=layer_maps.dtype, device=layer_maps.device)
    rollout, out = eye, []
    for layer_map in layer_maps:
        rollout = ((1 - residual) * layer_map + residual * eye) @ rollout
        out.append(rollout)
    return torch.stack(out)


# ---------------------------------------------------------------------------- agreement
def curve_points(n: int, steps: int) -> list[int]:
    """Numbers of removed (deletion) or inserted (insertion) positions: ``round(i n / steps)``, ``i = 0..steps``
    (at most ``n`` steps), starting at 0 and ending at ``n``."""
    steps = max(1, min(steps, n))
    return sorted({round(i * n / steps) for i in range(steps + 1)})


def curve_masks(positions: Tensor, order: Tensor, steps: int, mode: Literal["deletion", "insertion"],
                n_positions: int) -> tuple[Tensor, Tensor]:
    """Removal masks of a deletion / insertion curve (Petsiuk et al. 2018) over ``positions`` ranked by
    ``order`` (indices into ``positions``, most important first): deletion removes the first ``k`` ranked
    positions, insertion all but the first ``k``, ``k`` from :func:`curve_points`.
    Returns ``(fractions [K], masks [K, n_positions] bool)``."""
    ks = curve_points(len(positions), steps)
    ranked = positions[order]
    masks = torch.zeros(len(ks), n_positions, dtype=torch.bool)
    for row, k in enumerate(ks):
        masks[row, ranked[:k] if mode == "deletion" else ranked[k:]] = True
    return torch.tensor(ks, dtype=torch.float64) / max(len(positions), 1), masks


def perturbation_curve(evaluate: Callable[[Tensor], Tensor], positions: Tensor, order: Tensor, steps: int,
                       mode: Literal["deletion", "insertion"], n_positions: int) -> tuple[Tensor, Tensor]:
    """Deletion / insertion curve: ``evaluate`` (a bool removal mask ``[N, n_positions]`` -> ``[N]``) at the
    masks of :func:`curve_masks`.

    At ``k = 0`` deletion is ``f(x)`` and insertion ``f(all removed)``; at ``k = n`` the reverse, whatever
    the order. Returns ``(fractions, values)``.
    """
    fractions, masks = curve_masks(positions, order, steps, mode, n_positions)
    return fractions, evaluate(masks).double().cpu()


def curve_area(fractions: Tensor, values: Tensor) -> float:
    """Area under a curve by the trapezoid rule (the mean target over the removal fraction)."""
    return float(torch.trapezoid(values, fractions))


# ---------------------------------------------------------------------------- grounding
def grounding_shares(scores: Tensor, passages: Sequence[tuple[int, int]]) -> Tensor:
    """[INFERRED] Share of the total non-negative ``scores`` over all passages that falls on each passage.

    ``scores`` ``[..., pos]`` (attention mass, ``|attribution|`` or positive occlusion effect);
    ``passages`` token spans ``[start, end)``. Returns ``[..., n_passages]`` (NaN if all are 0).
    """
    mass = torch.stack([scores[..., start:end].clamp(min=0).sum(-1) for start, end in passages], -1)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp(min=1e-300), float("nan"))
