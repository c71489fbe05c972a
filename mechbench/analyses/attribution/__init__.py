"""Attention vs input attribution: saliency, integrated gradients, occlusion, and how far attention agrees.

A *target* is a scalar of the output for one example (``docs/metrics/attribution.md``):

* ``next_token`` / ``span``: ``f(x) = sum_i log p(y_i | x, y_<i)`` over the target tokens (one token
  for ``next_token``, the whole continuation for ``span``), read from the logits at ``p_i - 1``;
* ``logit_diff``: ``f(x) = logit_y(x) - logit_foil(x)`` at the last prompt position.

Input attribution scores each input position ``s`` (captum, Kokhlikyan et al. 2020, on the token
embeddings ``e_s`` through :mod:`mechbench.core.embeddings`):

* saliency (Simonyan et al. 2014): ``||df/de_s||_2``;
* input x gradient (Shrikumar et al. 2016): ``sum_d e_sd df/de_sd``;
* integrated gradients (Sundararajan et al. 2017): ``sum_d (e_sd - b_sd) int_0^1 df/de_sd(b + a(e - b)) da``
  with a Gauss-Legendre rule of ``ig_steps`` points (captum's default) and a baseline ``b`` (zero,
  pad-token or mean embedding at every position); the completeness error
  ``|sum_s IG_s - (f(e) - f(b))|`` is reported per example;
* occlusion (Zeiler & Fergus 2014; captum ``FeatureAblation``): ``f(x) - f(x with s replaced)``,
  the replacement being the zero, pad-token or mean embedding, or ``drop`` (the token removed and
  the sequence shortened).

Attention views of the same forward pass, over the query rows ``Q`` that read the target
(``Q = {p_i - 1}``): per head ``a_{l,h}[s] = 1/|Q| sum_{q in Q} A_{l,h}[q, s]``; per layer (mean over
heads); all layers (mean over layers); attention rollout (Abnar & Zuidema 2020):
``R_l = (A_l/2 + I/2) R_{l-1}``, ``R_0 = A_0/2 + I/2``, with ``A_l`` the head mean, read at ``Q``.

Agreement, per (example, method, view), over the prompt positions (the first one excluded by
default: it is the attention sink of most models, Xiao et al. 2023): Pearson and Spearman
correlation (``|score|`` by default) and top-k overlap; deletion / insertion curves (Petsiuk et al.
2018) over the positions ranked by a score, with a seeded random-order baseline. Pooling between
resolutions (max or mean over segments) is :func:`pool_segments` / :func:`pool_to_length`; a
comparison of a token-level map with a passage-level one uses it.

Grounding (XKD-Dial, Pandya 2026, arXiv 2603.18911; its definitions are known from the abstract
only, so the following are [INFERRED], after ``shared/reference/metrics.md`` §7): for a prompt with
knowledge passages and an answer drawn from passage ``c``, the share of attention mass (the views
above), of ``|attribution|`` (each gradient method) and of positive occlusion effect (each passage
replaced as a whole) that falls on passage ``c`` among all passages; the passages' share of the
passage tokens is the length baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import Seed, StrictModel
from mechbench.core.dataset import Batch, TokenDataset, iter_batches
from mechbench.core.embeddings import frozen_parameters, mean_embedding, run_from_embeddings, token_embeddings
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context
from mechbench.core.recorder import Recorder
from mechbench.core.tidy import complete_columns, to_tidy
from mechbench.errors import CapabilityError, ConfigError, DatasetError
from mechbench.stats import pearson, spearman, topk_overlap
from mechbench.tasks.grounding import (
    BUILTIN,
    GroundedItem,
    TargetPrompt,
    grounding_prompt,
    load_grounded,
    load_target_prompts,
)

ANALYSIS = "attribution"
Method = Literal["saliency", "input_x_gradient", "integrated_gradients", "occlusion"]
METHODS: tuple[str, ...] = ("saliency", "input_x_gradient", "integrated_gradients", "occlusion")
GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
View = Literal["head", "layer", "all", "rollout"]
VIEWS: tuple[str, ...] = ("head", "layer", "all", "rollout")
Replacement = Literal["zero", "pad", "mean", "drop"]
TargetKind = Literal["next_token", "span", "logit_diff"]
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


def embedding_forward(model: HookedModel, tokens: Tensor, targets: Sequence[Target],
                      attention_mask: Tensor | None = None) -> Forward:
    """``f(embeddings [k*B, pos, d]) -> [k*B]`` for the ``B`` examples of ``tokens``; captum's expanded
    inputs (``k`` copies, example ``i`` at rows ``i, i + B, ...``) are matched with repeated tokens."""
    batch = tokens.shape[0]

    def forward(embeddings: Tensor) -> Tensor:
        copies = embeddings.shape[0] // batch
        mask = None if attention_mask is None else attention_mask.repeat(copies, 1)
        return target_values(run_from_embeddings(model, tokens.repeat(copies, 1), embeddings, mask), targets)

    return forward


def sequence_targets(model: HookedModel, sequences: Sequence[Tensor], targets: Sequence[Target],
                     batch_size: int) -> Tensor:
    """``f`` of each token sequence (any lengths, right-padded in batches of ``batch_size``), no gradients."""
    values = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            lengths = torch.tensor([len(s) for s in chunk])
            tokens = torch.full((len(chunk), int(lengths.max())), model.pad_id, dtype=torch.long)
            for row, sequence in enumerate(chunk):
                tokens[row, :len(sequence)] = sequence
            batch = Batch(tokens=tokens, lengths=lengths, indices=torch.arange(len(chunk)))
            values.append(target_values(model.run_with_hooks(batch, []), targets[start:start + batch_size]))
    return torch.cat(values)


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


def replacement_embeddings(model: HookedModel, tokens: Tensor, embeddings: Tensor, how: str,
                           token_id: int | None = None) -> Tensor:
    """The embeddings that stand in for removed positions: ``zero``, ``pad`` (the embedding of
    ``token_id``, default the model's pad id) or ``mean`` (mean row of ``W_E``). ``[B, pos, d]``."""
    if how == "zero":
        return torch.zeros_like(embeddings)
    if how == "pad":
        chosen = model.pad_id if token_id is None else token_id
        return token_embeddings(model, torch.full_like(tokens, chosen)).to(embeddings.dtype)
    if how == "mean":
        return mean_embedding(model, tokens, embeddings).expand_as(embeddings).clone()
    raise ValueError(f"no replacement embedding for {how!r}; one of zero, pad, mean")


@dataclass
class Perturber:
    """``f`` of one example with sets of positions removed (a bool ``[N, pos]`` mask, one set per row), by
    replacing their embeddings, or (``replacement=None``) by dropping the tokens (only prompt positions)."""

    model: HookedModel
    tokens: Tensor
    target: Target
    embeddings: Tensor
    replacement: Tensor | None
    batch_size: int = 8

    def __call__(self, removed: Tensor) -> Tensor:
        if self.replacement is None:
            if removed[:, self.target.first:].any():
                raise ValueError("drop removes prompt positions only (a dropped target token has no prediction)")
            sequences = [self.tokens[~row] for row in removed]
            targets = [self.target.shifted(int(row.sum())) for row in removed]
            return sequence_targets(self.model, sequences, targets, self.batch_size)
        values = []
        forward = embedding_forward(self.model, self.tokens[None], [self.target])
        with torch.no_grad():
            for start in range(0, removed.shape[0], self.batch_size):
                mask = removed[start:start + self.batch_size, :, None]
                values.append(forward(torch.where(mask, self.replacement[None], self.embeddings[None])))
        return torch.cat(values)


def drop_occlusion(perturber: Perturber, features: Sequence[Sequence[int]]) -> Tensor:
    """Occlusion effect ``f(x) - f(x with the positions of feature k removed)`` for each feature. ``[n_features]``."""
    n = perturber.tokens.numel()
    masks = torch.zeros(len(features) + 1, n, dtype=torch.bool)
    for row, positions in enumerate(features, start=1):
        masks[row, list(positions)] = True
    values = perturber(masks)
    return values[0] - values[1:]


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


@dataclass
class AttentionViews:
    """Per example: head view ``[layer, head, T]``, layer view ``[layer, T]``, all-layer view ``[T]``,
    cumulative rollout ``[layer, T]``, all read at the target's query rows."""

    head: Tensor
    layer: Tensor
    all: Tensor
    rollout: Tensor


@dataclass
class ViewReducer:
    """Recorder reducer keeping, per example, the query-row head views and the head-mean maps for rollout."""

    examples: Sequence[Example]
    n_layers: int
    n_heads: int
    head: dict[int, Tensor] = field(default_factory=dict)
    maps: dict[int, Tensor] = field(default_factory=dict)

    def __call__(self, layer: int, pattern: Tensor, batch: Batch) -> None:
        for row, (index, n) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
            if index not in self.head:
                self.head[index] = torch.full((self.n_layers, self.n_heads, n), float("nan"), dtype=torch.float64)
                self.maps[index] = torch.full((self.n_layers, n, n), float("nan"), dtype=torch.float64)
            heads = pattern[row, :, :n, :n].double().cpu()
            self.head[index][layer] = query_view(heads, self.examples[index].target.query_rows)
            self.maps[index][layer] = heads.mean(0)

    def views(self, index: int) -> AttentionViews:
        head, maps = self.head[index], self.maps[index]
        rows = self.examples[index].target.query_rows
        layer = head.mean(1)
        return AttentionViews(head=head, layer=layer, all=layer.mean(0),
                              rollout=query_view(attention_rollout(maps), rows))


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


def _pieces(model: HookedModel, ids: Sequence[int]) -> list[str]:
    if model.tokenizer is None:
        return [str(int(i)) for i in ids]
    return [model.tokenizer.decode([int(i)]) for i in ids]


def _continuation_ids(model: HookedModel, text: str) -> list[int]:
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise DatasetError(f"target {text!r} has no tokens; give a non-empty continuation")
    return ids


def build_example(model: HookedModel, example_id: str, prompt: str, target: str | None, kind: TargetKind = "span",
                  foil: str | None = None, task: str = "prompts", passages: Sequence[tuple[int, int]] = (),
                  cited: int | None = None) -> Example:
    """Tokenise ``prompt`` (the model's BOS rule) ⊕ ``target`` (no special tokens) into an :class:`Example`.

    ``next_token`` keeps the target's first token (``target=None``: the model's greedy next token);
    ``logit_diff`` compares the first tokens of ``target`` and ``foil``; ``passages`` are character
    spans of ``prompt``.
    """
    prompt_ids, _ = model.tokenize(prompt)
    if target is None:
        if kind != "next_token":
            raise DatasetError(f"example {example_id!r} has no target; a {kind} target needs one (or use next_token)")
        with torch.no_grad():
            target_ids = [int(model.bridge(prompt_ids[None].to(model.device))[0, -1].argmax())]
    else:
        target_ids = _continuation_ids(model, target)
    if kind == "logit_diff":
        if foil is None:
            raise DatasetError(f"example {example_id!r} has no foil; a logit_diff target needs one")
        target_ids = target_ids[:1]
        built = Target((len(prompt_ids),), tuple(target_ids), "logit_diff", (_continuation_ids(model, foil)[0],))
    else:
        target_ids = target_ids[:1] if kind == "next_token" else target_ids
        built = Target(tuple(range(len(prompt_ids), len(prompt_ids) + len(target_ids))), tuple(target_ids))
    tokens = torch.cat([prompt_ids, torch.tensor(target_ids, dtype=torch.long)])
    check_context(tokens.numel(), model.architecture.n_ctx, model.name,
                  f"example {example_id!r} has {tokens.numel()} tokens", "shorten it")
    spans = tuple(model.token_span(prompt, start, end) for start, end in passages)
    return Example(example_id, tokens, built, _pieces(model, tokens.tolist()), task, spans, cited,
                   model.tokenizer.decode(list(built.token_ids)))


def prompt_examples(model: HookedModel, prompts: Sequence[TargetPrompt], kind: TargetKind) -> list[Example]:
    """Examples of prompts with targets (task ``prompts``)."""
    return [build_example(model, p.id, p.prompt, p.target, kind, p.foil) for p in prompts]


def grounding_examples(model: HookedModel, items: Sequence[GroundedItem]) -> list[Example]:
    """Examples of grounded QA items: target = the answer's log-probability (a span, " " + answer)."""
    examples = []
    for item in items:
        prompt, spans = grounding_prompt(item)
        examples.append(build_example(model, item.id, prompt, " " + item.answer, "span", task="grounding",
                                      passages=spans, cited=item.cited))
    return examples


# ---------------------------------------------------------------------------- runner
def feature_positions(example: Example, exclude_first: bool) -> Tensor:
    """Positions compared between attention and attribution: the prompt, without position 0 if ``exclude_first``."""
    return torch.arange(1 if exclude_first else 0, example.prompt_length)


def _attribute_batch(model: HookedModel, batch: Batch, examples: Sequence[Example],
                     config: AttributionConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Scores ``{method: [B, pos]}`` and per-example extras (``f``, IG ``delta``, ``f_baseline``) for one batch."""
    tokens, mask = batch.tokens, batch.attention_mask
    chosen = [examples[i] for i in batch.indices.tolist()]
    targets = [e.target for e in chosen]
    real = mask.bool()[..., None]
    scores: dict[str, Tensor] = {}
    extras: dict[str, Tensor] = {}
    with frozen_parameters(model):
        embeddings = token_embeddings(model, tokens, mask)
        forward = embedding_forward(model, tokens, targets, mask)
        with torch.no_grad():
            extras["target_value"] = forward(embeddings).detach()
        if "saliency" in config.methods:
            scores["saliency"] = saliency(forward, embeddings)
        if "input_x_gradient" in config.methods:
            scores["input_x_gradient"] = input_x_gradient(forward, embeddings)
        if "integrated_gradients" in config.methods:
            baseline = replacement_embeddings(model, tokens, embeddings, config.ig_baseline, config.replacement_token)
            baseline = torch.where(real, baseline, embeddings)  # pads: baseline = input, attribution 0
            scores["integrated_gradients"], delta = integrated_gradients(
                forward, embeddings, baseline, config.ig_steps, config.ig_method, config.internal_batch_size)
            extras["ig_delta"] = delta.detach()
            with torch.no_grad():
                extras["ig_baseline_value"] = forward(baseline).detach()
        if "occlusion" in config.methods and config.replacement != "drop":
            replacement = replacement_embeddings(model, tokens, embeddings, config.replacement,
                                                 config.replacement_token)
            positions = torch.arange(tokens.shape[1])[None, :]
            feature_mask = torch.minimum(positions, (batch.lengths - 1)[:, None])  # pads join the last real token
            scores["occlusion"] = occlusion(forward, embeddings, replacement, feature_mask)
    return {k: v.detach().double().cpu() for k, v in scores.items()}, {k: v.double().cpu() for k, v in extras.items()}


def _perturber(model: HookedModel, example: Example, config: AttributionConfig) -> Perturber:
    tokens = example.tokens[None]
    embeddings = token_embeddings(model, tokens)
    replacement = None
    if config.replacement != "drop":
        replacement = replacement_embeddings(model, tokens, embeddings, config.replacement,
                                             config.replacement_token)[0]
    return Perturber(model, example.tokens, example.target, embeddings[0], replacement,
                     config.internal_batch_size or config.batch_size)


def _view_items(views: AttentionViews) -> list[tuple[str, int | None, int | None, Tensor]]:
    """``(view, layer, head, map [T])`` for every attention view of an example."""
    n_layers, n_heads = views.head.shape[:2]
    items: list[tuple[str, int | None, int | None, Tensor]] = [
        ("head", layer, head, views.head[layer, head]) for layer in range(n_layers) for head in range(n_heads)]
    items += [("layer", layer, None, views.layer[layer]) for layer in range(n_layers)]
    items += [("all", None, None, views.all)]
    items += [("rollout", layer, None, views.rollout[layer]) for layer in range(n_layers)]
    return items


def _agreement_rows(example: Example, scores: dict[str, Tensor], views: AttentionViews,
                    config: AttributionConfig) -> pd.DataFrame:
    positions = feature_positions(example, config.exclude_first)
    items = [item for item in _view_items(views) if item[0] in config.views]
    if len(positions) < 2 or not items or not scores:
        return pd.DataFrame()
    maps = torch.stack([item[3][positions] for item in items])  # [V, n]
    frames = []
    for method, values in scores.items():
        score = values[positions]
        score = score.abs() if config.absolute else score
        stats = {"pearson": pearson(maps, score), "spearman": spearman(maps, score),
                 "topk_overlap": topk_overlap(maps, score, config.top_k)}
        for metric, value in stats.items():
            frames.append(pd.DataFrame({"view": [i[0] for i in items], "layer": [i[1] for i in items],
                                        "head": [i[2] for i in items], "value": value.numpy(), "metric": metric,
                                        "method": method, "n_positions": len(positions)}))
    return pd.concat(frames, ignore_index=True)


def _curve_rows(model: HookedModel, example: Example, scores: dict[str, Tensor], views: AttentionViews,
                config: AttributionConfig, generator: torch.Generator) -> pd.DataFrame:
    positions = feature_positions(example, config.exclude_first)
    if len(positions) < 1 or config.curve_steps == 0:
        return pd.DataFrame()
    perturber = _perturber(model, example, config)
    rankings: dict[str, Tensor] = {method: values[positions] for method, values in scores.items()}
    if "all" in config.views:
        rankings["attention_all"] = views.all[positions]
    if "rollout" in config.views:
        rankings["attention_rollout"] = views.rollout[-1][positions]
    orders = {name: torch.argsort(values, descending=True, stable=True) for name, values in rankings.items()}
    orders |= {f"random{i}": torch.randperm(len(positions), generator=generator) for i in range(config.n_random)}
    n = example.tokens.numel()
    curves = {(name, mode): curve_masks(positions, order, config.curve_steps, mode, n)
              for mode in ("deletion", "insertion") for name, order in orders.items()}
    values = perturber(torch.cat([masks for _, masks in curves.values()])).double().cpu()  # one batched pass
    frames, start, random = [], 0, {}
    for (name, mode), (fractions, masks) in curves.items():
        curve, start = values[start:start + len(masks)], start + len(masks)
        if name.startswith("random"):
            random.setdefault(mode, []).append(curve)
            if len(random[mode]) < config.n_random:
                continue
            name, curve = "random", torch.stack(random[mode]).mean(0)
        frames.append(pd.DataFrame({"metric": mode, "ranking": name, "fraction": fractions.numpy(),
                                    "step": range(len(fractions)), "value": curve.numpy()}))
        frames.append(pd.DataFrame({"metric": [f"{mode}_auc"], "ranking": [name],
                                    "value": [curve_area(fractions, curve)]}))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_random"] = config.n_random
    frame["n_positions"] = len(positions)
    return frame


def grounding_shares(scores: Tensor, passages: Sequence[tuple[int, int]]) -> Tensor:
    """[INFERRED] Share of the total non-negative ``scores`` over all passages that falls on each passage.

    ``scores`` ``[..., pos]`` (attention mass, ``|attribution|`` or positive occlusion effect);
    ``passages`` token spans ``[start, end)``. Returns ``[..., n_passages]`` (NaN if all are 0).
    """
    mass = torch.stack([scores[..., start:end].clamp(min=0).sum(-1) for start, end in passages], -1)
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp(min=1e-300), float("nan"))


def _grounding_rows(model: HookedModel, example: Example, scores: dict[str, Tensor], views: AttentionViews,
                    config: AttributionConfig) -> pd.DataFrame:
    passages = example.passages
    sources: list[tuple[str | None, str | None, int | None, Tensor]] = []
    sources += [(method, None, None, values.abs()) for method, values in scores.items() if method in GRADIENT_METHODS]
    sources += [(None, "layer", layer, views.layer[layer]) for layer in range(views.layer.shape[0])]
    sources += [(None, "all", None, views.all), (None, "rollout", None, views.rollout[-1])]
    lengths = torch.tensor([float(e - s) for s, e in passages])
    rows: list[tuple[str | None, str | None, int | None, Tensor, Tensor]] = [
        (method, view, layer, grounding_shares(values.double(), passages),
         torch.stack([values[s:e].double().sum() for s, e in passages])) for method, view, layer, values in sources]
    if "occlusion" in config.methods:  # each passage removed as a whole: f(x) - f(x without it)
        effects = drop_occlusion(_perturber(model, example, config), [range(s, e) for s, e in passages]).double()
        positive = effects.clamp(min=0)
        share = positive / positive.sum() if positive.sum() > 0 else torch.full_like(positive, float("nan"))
        rows.append(("occlusion", None, None, share, effects))
    frames = []
    for method, view, layer, share, mass in rows:
        frames.append(pd.DataFrame({"metric": "grounding_share", "method": method, "view": view, "layer": layer,
                                    "passage": range(len(passages)), "value": share.numpy(),
                                    "mass": mass.numpy(), "length_share": (lengths / lengths.sum()).numpy(),
                                    "cited": [i == example.cited for i in range(len(passages))]}))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_passages"] = len(passages)
    return frame


def _token_rows(example: Example, scores: dict[str, Tensor], views: AttentionViews, config: AttributionConfig,
                extras: dict[str, float]) -> pd.DataFrame:
    n = example.tokens.numel()
    segment = ["prompt" if p < example.prompt_length else "target" for p in range(n)]
    frames = [pd.DataFrame({"metric": "attribution", "method": method, "position": range(n),
                            "token": example.token_texts, "segment": segment, "value": values[:n].numpy()})
              for method, values in scores.items()]
    for view, values in (("all", views.all), ("rollout", views.rollout[-1])):
        frames.append(pd.DataFrame({"metric": "attention", "view": view, "position": range(n),
                                    "token": example.token_texts, "segment": segment, "value": values.numpy()}))
    for layer in range(views.layer.shape[0]):
        frames.append(pd.DataFrame({"metric": "attention", "view": "layer", "layer": layer, "position": range(n),
                                    "token": example.token_texts, "segment": segment,
                                    "value": views.layer[layer].numpy()}))
    if config.store_head_maps:
        heads = to_tidy(views.head, ("layer", "head", "position"), metric="attention", view="head")
        heads["token"] = [example.token_texts[p] for p in heads["position"]]
        heads["segment"] = [segment[p] for p in heads["position"]]
        frames.append(heads)
    frames.append(pd.DataFrame({"metric": ["target_value"], "value": [extras["target_value"]],
                                "target": [example.target_text if example.target_text is not None else
                                           "".join(example.token_texts[p] for p in example.target.positions)],
                                "prompt_length": [example.prompt_length]}))
    if "ig_delta" in extras:
        gap = extras["target_value"] - extras["ig_baseline_value"]
        frames.append(pd.DataFrame({"metric": ["ig_completeness_error", "ig_relative_error"],
                                    "value": [abs(extras["ig_delta"]), abs(extras["ig_delta"]) / max(abs(gap), 1e-12)],
                                    "f_input": extras["target_value"], "f_baseline": extras["ig_baseline_value"],
                                    "method": "integrated_gradients"}))
    return pd.concat(frames, ignore_index=True)


INT_COLUMNS = ("layer", "head", "position", "step", "passage", "n_positions", "n_random", "n_passages",
               "prompt_length")


def run_attribution(model: HookedModel, examples: Sequence[Example], config: AttributionConfig | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Attribution, attention views, their agreement, deletion/insertion curves and (examples with
    passages) grounding shares, as tidy rows (see ``docs/metrics/attribution.md`` for every metric)."""
    config = config or AttributionConfig()
    check_config(config, data=False)
    if not examples:
        raise DatasetError("no examples; give at least one prompt with a target")
    if len({e.id for e in examples}) != len(examples):
        raise DatasetError("example ids repeat; give every example a unique id")
    dataset = TokenDataset(tokens=[e.tokens for e in examples], example_ids=[e.id for e in examples],
                           token_texts=[e.token_texts for e in examples])
    reducer = ViewReducer(examples, model.n_layers, model.n_heads)
    Recorder(model, batch_size=config.batch_size, progress=progress).run(dataset, {"pattern": reducer},
                                                                         description="attention views")
    generator = torch.Generator().manual_seed(config.seed)
    frames = []
    n_batches = -(-len(dataset) // config.batch_size)
    for batch in tqdm(iter_batches(dataset, config.batch_size, pad_id=model.pad_id), total=n_batches,
                      desc="attribution", disable=not progress, unit="batch", leave=False):
        scores, extras = _attribute_batch(model, batch, examples, config)
        for row, index in enumerate(batch.indices.tolist()):
            example = examples[index]
            n = example.tokens.numel()
            mine = {method: values[row, :n] for method, values in scores.items()}
            if "occlusion" in config.methods and config.replacement == "drop":
                effects = drop_occlusion(_perturber(model, example, config),
                                         [[p] for p in range(example.prompt_length)])
                mine["occlusion"] = torch.cat([effects.double(),
                                               torch.full((n - example.prompt_length,), float("nan"))])
            views = reducer.views(index)
            compared = {method: values.nan_to_num(0.0) for method, values in mine.items()}
            parts = [_token_rows(example, mine, views, config, {k: float(v[row]) for k, v in extras.items()}),
                     _agreement_rows(example, compared, views, config),
                     _curve_rows(model, example, compared, views, config, generator)]
            if example.passages:
                parts.append(_grounding_rows(model, example, compared, views, config))
            frame = pd.concat([p for p in parts if not p.empty], ignore_index=True)
            frame["example"] = example.id
            frame["task"] = example.task
            frames.append(frame)
    frame = complete_columns(pd.concat(frames, ignore_index=True), INT_COLUMNS,
                             ("method", "view", "ranking", "token", "segment", "target"))
    if "cited" in frame:
        frame["cited"] = frame["cited"].astype("boolean")
    frame["target_kind"] = [config.target if task == "prompts" else "span" for task in frame["task"]]
    frame["replacement"] = config.replacement
    frame["ig_baseline"] = config.ig_baseline
    frame["ig_steps"] = config.ig_steps
    frame["absolute"] = config.absolute
    frame["exclude_first"] = config.exclude_first
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


# ---------------------------------------------------------------------------- config
class AttributionConfig(StrictModel):
    """Options of the ``attribution`` analysis (config block ``analyses.attribution``)."""

    prompts: str | None = Field(BUILTIN, description="'builtin' (10 short prompts with target and foil), a .jsonl "
                                "of {id, prompt, target?, foil?}, or null to skip")
    grounding: str | None = Field(BUILTIN, description="'builtin' (12 grounded QA items, 3 passages each), a .jsonl "
                                  "of {id, passages, question, answer, cited}, or null to skip")
    limit: PositiveInt | None = Field(None, description="use only the first N prompts and N grounding items")
    target: TargetKind = Field("next_token", description="what is attributed for the prompts: next_token "
                               "(log-prob of the target's first token), span (log-prob of the whole target), "
                               "logit_diff (target minus foil logit); grounding always uses span (the answer)")
    methods: list[Method] = Field(list(METHODS), min_length=1, description="attribution methods")
    views: list[View] = Field(list(VIEWS), min_length=1, description="attention views compared with them")
    ig_steps: PositiveInt = Field(32, description="integration points of integrated gradients")
    ig_method: Literal["gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right"] = (
        Field("gausslegendre", description="captum quadrature rule of integrated gradients"))
    ig_baseline: Literal["zero", "pad", "mean"] = Field("pad", description="IG baseline at every position: the pad "
                                                        "token's embedding, the zero embedding (larger completeness "
                                                        "error measured on a tiny Llama), or the mean embedding")
    internal_batch_size: PositiveInt | None = Field(16, description="rows per forward pass of IG, passage occlusion "
                                                    "and the curves (memory bound)")
    replacement: Replacement = Field("pad", description="occlusion and deletion curves: replace a token's embedding "
                                     "by zero, the pad token's, the mean embedding, or drop the token")
    replacement_token: NonNegativeInt | None = Field(None, description="token id of the 'pad' replacement and "
                                                     "baseline (default: the tokenizer's pad, else eos, else 0)")
    absolute: bool = Field(True, description="correlate attention with |attribution| (else the signed scores)")
    exclude_first: bool = Field(True, description="leave position 0 (BOS, the attention sink) out of comparisons")
    top_k: PositiveInt = Field(3, description="k of the top-k overlap")
    curve_steps: NonNegativeInt = Field(10, description="points of each deletion/insertion curve (0 = no curves)")
    n_random: NonNegativeInt = Field(5, description="random orders averaged into the random-baseline curve")
    store_head_maps: bool = Field(False, description="also store every head's attention map per position (large)")
    seed: Seed = Field(0, description="seed of the random orders")
    batch_size: PositiveInt = Field(4, description="prompts per forward pass")


def check_config(config: AttributionConfig, data: bool = True) -> None:
    """Fail before any model is loaded on inconsistent options or (``data``) missing or empty data files."""
    if config.prompts is None and config.grounding is None:
        raise ConfigError("attribution.prompts and attribution.grounding are both null; give at least one data set")
    if data:
        if config.prompts is not None:
            prompts = load_target_prompts(config.prompts, config.limit)
            missing = [p.id for p in prompts if (config.target != "next_token" and p.target is None)
                       or (config.target == "logit_diff" and p.foil is None)]
            if missing:
                need = "target and foil" if config.target == "logit_diff" else "target"
                raise ConfigError(f"attribution.target is {config.target} but prompts {', '.join(missing[:5])} have "
                                  f"no {need}; add them or use target: next_token")
        if config.grounding is not None:
            load_grounded(config.grounding, config.limit)


def run_attribution_from_config(model: HookedModel, config: AttributionConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: build the prompt and grounding examples, then :func:`run_attribution`."""
    check_config(config)
    if model.tokenizer is None:
        raise CapabilityError(f"model {model.name} has no tokenizer; call run_attribution with Example objects")
    examples: list[Example] = []
    if config.prompts is not None:
        examples += prompt_examples(model, load_target_prompts(config.prompts, config.limit), config.target)
    if config.grounding is not None:
        examples += grounding_examples(model, load_grounded(config.grounding, config.limit))
    return run_attribution(model, examples, config, progress)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="attention vs input attribution: saliency, input x gradient, integrated gradients and occlusion "
                "against per-head / per-layer / all-layer / rollout attention (correlations, top-k overlap, "
                "deletion and insertion curves), and grounding shares on cited passages",
    citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010); "
             "Pandya 2026, XKD-Dial (arXiv 2603.18911); Sundararajan et al. 2017 (integrated gradients)",
    config_model=AttributionConfig,
    run=run_attribution_from_config,
    headline_metrics=("pearson", "grounding_share"),
    check=check_config,
    figures="mechbench.analyses.attribution.figures",
)
