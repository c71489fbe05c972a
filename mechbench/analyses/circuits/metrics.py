"""Pure metric functions of the circuits analysis: logit difference, patching normalisations, attribution
scores, DLA, circuit selection, faithfulness and overlap with its permutation baseline (tensors in, tensors
or plain numbers out)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Direction = Literal["noising", "denoising"]
CircuitRule = Literal["top_k", "top_p", "threshold"]

#: Node labels of the edge graph that are not heads or MLPs: the input embedding and the unembedding.
INPUT = "input"
LOGITS = "logits"

#: Keys of :func:`faithfulness` and :func:`overlap` (metric names of their rows).
FAITHFULNESS = "faithfulness"
FAITHFULNESS_NORMALISED = "faithfulness_normalised"
OVERLAP_A = "overlap_a"
OVERLAP_B = "overlap_b"
JACCARD = "jaccard"


# ---------------------------------------------------------------------------- metric functions
def logit_diff(logits: Tensor, end: Tensor, answer: Tensor, wrong: Tensor) -> Tensor:
    """``logit(answer) - logit(wrong)`` at each example's end position (Wang et al. 2022). ``[batch]``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    at_end = logits[rows, end.to(logits.device)]
    return at_end[rows, answer.to(logits.device)] - at_end[rows, wrong.to(logits.device)]


def normalised_patching(patched: Tensor | float, clean: Tensor | float, corrupt: Tensor | float,
                        direction: Direction) -> Tensor:
    """Normalised patching metric (TransformerLens / ARENA conventions; ``docs/metrics/circuits.md``).

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
    """Direct logit attribution of components at the end position (Lieberum et al. 2023).

    ``DLA_c = LN_frozen(o_c) · (W_U[:, answer] - W_U[:, wrong])`` where ``LN_frozen`` divides by the
    final norm's scale of the *full* clean residual (and centres, for LayerNorm), so the DLA of all
    components plus the biases sums to the logit difference. ``results``: ``[batch, component,
    d_model]``; ``scale``: ``[batch]``; ``direction``: ``[batch, d_model]`` (final-norm weight already
    multiplied in). Returns ``[batch, component]``.
    """
    if center:
        results = results - results.mean(-1, keepdim=True)
    return torch.einsum("bcm,bm->bc", results.double(), direction.double()) / scale.double()[:, None]


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
    out = {FAITHFULNESS: circuit / full if full != 0 else float("nan")}
    if empty is not None:
        out[FAITHFULNESS_NORMALISED] = (circuit - empty) / (full - empty) if full != empty else float("nan")
    return out


def curve_sizes(n_items: int, n_points: int) -> list[int]:
    """Circuit sizes of a faithfulness curve: ``n_points`` sizes spaced geometrically from 1 to ``n_items``
    (rounded, duplicates dropped), so small circuits are sampled densely and the full ranking is the last."""
    if n_items < 1:
        return []
    if n_points < 2 or n_items == 1:
        return [n_items]
    return sorted({max(1, round(n_items ** (i / (n_points - 1)))) for i in range(n_points)})


def smallest_faithful(sizes: Sequence[int], normalised: Sequence[float], target: float) -> tuple[int, bool]:
    """The smallest circuit size of a curve whose normalised faithfulness reaches ``target`` (Hanna et al.
    2024 choose circuits at a stated faithfulness, not at a fixed size), and whether one does; when none
    does, the most faithful size (the first of equals)."""
    for size, value in zip(sizes, normalised, strict=True):
        if value >= target:
            return size, True
    finite = [(value, -size) for size, value in zip(sizes, normalised, strict=True) if not math.isnan(value)]
    return (-max(finite)[1], False) if finite else (sizes[-1], False)


def overlap(a: Iterable[Any], b: Iterable[Any]) -> dict[str, float]:
    """``|A∩B|/|A|``, ``|A∩B|/|B|`` and Jaccard ``|A∩B|/|A∪B|`` of two circuits (sets of heads or edges).

    Merullo et al. 2024 report the share of the IOI circuit reused by Colored Objects, read here as
    ``|A∩B|/|A|`` with A = IOI [INFERRED: the denominator is not stated in the text read]; the
    other two are reported alongside. Empty sets give NaN.
    """
    a, b = set(a), set(b)
    both = len(a & b)
    nan = float("nan")
    return {OVERLAP_A: both / len(a) if a else nan, OVERLAP_B: both / len(b) if b else nan,
            JACCARD: both / len(a | b) if a | b else nan}


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
    expected = {OVERLAP_A: len(b) / n, OVERLAP_B: len(a) / n, JACCARD: float("nan")}
    out = {}
    for key, value in observed.items():
        sample = torch.tensor(draws[key], dtype=torch.float64)
        exceed = int((sample >= value - 1e-12).sum()) if not math.isnan(value) else n_permutations
        out[key] = {"observed": value, "baseline": float(sample.nanmean()) if n_permutations else float("nan"),
                    "expected": expected[key], "p_value": (1 + exceed) / (1 + n_permutations)}
    return out


def edge_nodes(edges: Iterable[tuple[str, str]]) -> set[str]:
    """Node labels touched by a set of edges (``L1H0.k`` → ``L1H0``; input and logits dropped)."""
    nodes = set()
    for up, down in edges:
        for label in (up, down.split(".")[0]):
            if label not in (INPUT, LOGITS):
                nodes.add(label)
    return nodes

