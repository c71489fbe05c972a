"""Model-running code of the attribution analysis: examples, forward passes through the embeddings, the
perturbations, and the runners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses.attribution.config import AttributionConfig, TargetKind, check_config
from mechbench.analyses.attribution.metrics import (
    Example,
    Forward,
    Target,
    converged_integrated_gradients,
    curve_masks,
    feature_positions,
    input_x_gradient,
    integrated_gradients,
    occlusion,
    saliency,
    target_values,
)
from mechbench.analyses.attribution.reducers import AttentionViews, ViewReducer
from mechbench.analyses.attribution.rows import (
    ANALYSIS,
    COLUMNS,
    DELETION,
    INSERTION,
    TARGET_VALUE,
    _agreement_rows,
    _curve_frame,
    _grounding_frame,
    _token_rows,
)
from mechbench.core.dataset import Batch, TokenDataset, iter_batches
from mechbench.core.embeddings import frozen_parameters, mean_embedding, run_from_embeddings, token_embeddings
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context
from mechbench.core.recorder import Recorder
from mechbench.core.tidy import finish_rows
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.grounding import GroundedItem, TargetPrompt, grounding_prompt, load_grounded, load_target_prompts


# ---------------------------------------------------------------------------- forward passes
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


# ---------------------------------------------------------------------------- examples
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
            target_ids = [int(model.forward(prompt_ids[None])[0, -1].argmax())]
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
            extras[TARGET_VALUE] = forward(embeddings).detach()
        if "saliency" in config.methods:
            scores["saliency"] = saliency(forward, embeddings)
        if "input_x_gradient" in config.methods:
            scores["input_x_gradient"] = input_x_gradient(forward, embeddings)
        if "integrated_gradients" in config.methods:
            baseline = replacement_embeddings(model, tokens, embeddings, config.ig_baseline, config.replacement_token)
            baseline = torch.where(real, baseline, embeddings)  # pads: baseline = input, attribution 0
            if config.ig_tolerance is None:
                scores["integrated_gradients"], delta = integrated_gradients(
                    forward, embeddings, baseline, config.ig_steps, config.ig_method, config.internal_batch_size)
                points, converged = torch.full_like(delta, config.ig_steps), None
            else:
                scores["integrated_gradients"], delta, points, converged = converged_integrated_gradients(
                    lambda rows: embedding_forward(model, tokens[rows], [targets[i] for i in rows.tolist()],
                                                   mask[rows]),
                    embeddings, baseline, config.ig_steps, config.ig_tolerance, config.ig_max_steps,
                    config.ig_method, config.internal_batch_size)
            extras["ig_delta"], extras["ig_points"] = delta.detach(), points
            if converged is not None:
                extras["ig_converged"] = converged
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
              for mode in (DELETION, INSERTION) for name, order in orders.items()}
    values = perturber(torch.cat([masks for _, masks in curves.values()])).double().cpu()  # one batched pass
    return _curve_frame(curves, values, config, len(positions))


def _grounding_rows(model: HookedModel, example: Example, scores: dict[str, Tensor], views: AttentionViews,
                    config: AttributionConfig) -> pd.DataFrame:
    effects: Tensor | None = None
    if "occlusion" in config.methods:  # each passage removed as a whole: f(x) - f(x without it)
        effects = drop_occlusion(_perturber(model, example, config),
                                 [range(s, e) for s, e in example.passages]).double()
    return _grounding_frame(example, scores, views, effects)


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
    frame = pd.concat(frames, ignore_index=True)
    frame["target_kind"] = [config.target if task == "prompts" else "span" for task in frame["task"]]
    frame["replacement"] = config.replacement
    frame["ig_baseline"] = config.ig_baseline
    frame["ig_steps"] = config.ig_steps
    frame["absolute"] = config.absolute
    frame["exclude_first"] = config.exclude_first
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


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
