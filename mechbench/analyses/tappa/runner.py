"""Running TAPPA on a model: the texts and windows, the recorded passes, the KV-eviction and pruning losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from mechbench.analyses.tappa.config import TappaConfig, check_config
from mechbench.analyses.tappa.metrics import (
    MODES,
    PatternCriteria,
    eviction_keep,
    layer_budgets,
    tappa_prune_scores,
    window_bounds,
)
from mechbench.analyses.tappa.reducers import PruneReducer, TappaReducer
from mechbench.analyses.tappa.rows import (
    ANALYSIS,
    COLUMNS,
    KV_BUDGET,
    KV_EVICTION_NLL,
    PRUNE_NLL,
    PRUNE_SCORE,
    band_rows,
    pattern_rows,
    qsim_rows,
)
from mechbench.core.dataset import TokenDataset
from mechbench.core.hooked import HookedModel
from mechbench.core.interventions import PatternEdit, renormalise_to_keys, skip_layers_hooks, text_nll
from mechbench.core.limits import check_context
from mechbench.core.recorder import ATTENTION, Batch, Recorder
from mechbench.core.tidy import finish_rows
from mechbench.errors import CapabilityError, ConfigError, DatasetError
from mechbench.tasks.texts import load_texts


def text_dataset(model: HookedModel, config: TappaConfig) -> TokenDataset:
    """The analysis texts, tokenised and truncated (or, with ``join``, one stream cut into chunks).

    A model without a tokenizer (the toy models) reads each text as whitespace-separated token ids.
    """
    ids, texts = load_texts(config.texts, config.limit)
    items: list[str] | list[list[int]] = texts
    if model.tokenizer is None:
        try:
            items = [[int(piece) for piece in text.split()] for text in texts]
        except ValueError:
            raise DatasetError(f"{model.name} has no tokenizer, so each text must be whitespace-separated token "
                               "ids (e.g. '0 5 3 9'); give such a file or a model with a tokenizer") from None
    if not config.join:
        return model.tokenize_dataset(items, max_tokens=config.max_tokens, prepend_bos=config.prepend_bos,
                                      example_ids=ids)
    if model.tokenizer is None:
        stream = torch.tensor([i for item in items for i in item])
        model.check_token_ids(stream, f"text set {config.texts!r}")
        pieces = [str(int(i)) for i in stream]
    else:
        stream, pieces = model.tokenize("\n\n".join(texts), config.prepend_bos)
    size = config.max_tokens
    starts = [s for s in range(0, stream.numel(), size) if stream.numel() - s >= 2]
    if not starts:
        raise DatasetError(f"text set {config.texts!r} has fewer than 2 tokens")
    check_context(min(size, stream.numel()), model.architecture.n_ctx, model.name,
                  f"tappa.join cuts the joined texts into chunks of {min(size, stream.numel())} tokens",
                  "lower tappa.max_tokens")
    return TokenDataset(tokens=[stream[s:s + size] for s in starts],
                        example_ids=[f"chunk{i}" for i in range(len(starts))],
                        token_texts=[pieces[s:s + size] for s in starts])


def window_dataset(dataset: TokenDataset, size: int, stride: int) -> TokenDataset:
    """Every text cut into the pruning variant's windows (each window is its own forward pass)."""
    tokens, ids, texts = [], [], []
    for example, ids_, pieces in zip(dataset.example_ids, dataset.tokens, dataset.token_texts, strict=True):
        for start, end in window_bounds(ids_.numel(), size, stride):
            tokens.append(ids_[start:end])
            ids.append(f"{example}@{start}")
            texts.append(pieces[start:end])
    if not tokens:
        raise DatasetError("no text has 2 or more tokens for the pruning variant's windows")
    return TokenDataset(tokens=tokens, example_ids=ids, token_texts=texts)


def _subset(dataset: TokenDataset, indices: Sequence[int]) -> TokenDataset:
    return TokenDataset(tokens=[dataset.tokens[i] for i in indices],
                        example_ids=[dataset.example_ids[i] for i in indices],
                        token_texts=[dataset.token_texts[i] for i in indices])


def split_heldout(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """``(scored, held_out)`` example indices: the last ``ceil(n x fraction)`` are held out."""
    held = min(n - 1, max(1, math.ceil(n * fraction)))
    return list(range(n - held)), list(range(n - held, n))


def record_main(model: HookedModel, dataset: TokenDataset, config: TappaConfig, progress: bool = True) -> TappaReducer:
    """One pass: ``kv`` q-sim, pattern scores and (RoPE models) band advantages for every layer and head."""
    rope = model.architecture.uses_rope
    reducer = TappaReducer(len(dataset), model.n_layers, model.n_heads, config.kv_window, config.mode,
                           config.rbf_sigma, pattern_criteria(config), config.rope_bands if rope else None,
                           adjacent_pairs=model.architecture.rotary_adjacent_pairs)
    Recorder(model, batch_size=config.batch_size, progress=progress).run(
        dataset, {ATTENTION: reducer}, description="tappa: q-sim and patterns", attention=config.attention)
    return reducer


def record_prune(model: HookedModel, windows: TokenDataset, config: TappaConfig, progress: bool = True) -> PruneReducer:
    """One pass over the pruning windows: pre-RoPE q-sim per head and Block Influence per layer."""
    reducer = PruneReducer(len(windows), model.n_layers, model.n_heads, config.mode, config.rbf_sigma)
    Recorder(model, batch_size=config.batch_size, progress=progress).run(
        windows, {"q": reducer.queries, "resid_pre": reducer.resid_pre, "resid_post": reducer.resid_post},
        description="tappa: pruning scores")
    return reducer


def pattern_criteria(config: TappaConfig) -> PatternCriteria:
    """The [INFERRED] pattern-type criteria a TappaConfig sets."""
    return PatternCriteria(config.local_window, config.n_columns, config.max_period, config.mass_threshold,
                           config.diffuse_threshold)


def eviction_edit(prompt_lengths: Sequence[int], budgets: Tensor, window: int, kernel: int, gamma: float,
                  group_size: int) -> dict[int, PatternEdit]:
    """Pattern edits that simulate decoding after the prompt with a compressed cache: rows at or after
    each example's prompt end see only the kept prompt keys (and every continuation key); prompt rows
    (the prefill) are unchanged. ``budgets``: ``[example, layer]``. Applied per layer."""
    def edit_for(layer: int) -> PatternEdit:
        def edit(pattern: Tensor, batch: Batch) -> Tensor:
            edited = pattern.clone()
            for row, (index, length) in enumerate(zip(batch.indices.tolist(), batch.lengths.tolist(), strict=True)):
                prompt = prompt_lengths[index]
                keep = eviction_keep(pattern[row, :, :length, :length], prompt, int(budgets[index, layer]), window,
                                     kernel, gamma, group_size).to(pattern.device)
                mask = torch.ones(pattern.shape[1], length - prompt, length, dtype=torch.bool, device=pattern.device)
                mask[..., :prompt] = keep[:, None, :]
                edited[row, :, prompt:length, :length] = renormalise_to_keys(pattern[row, :, prompt:length, :length],
                                                                             mask)
            return edited
        return edit
    return {layer: edit_for(layer) for layer in range(budgets.shape[1])}


def kv_budget_rows(model: HookedModel, dataset: TokenDataset, kv_qsim: Tensor, config: TappaConfig,
                   progress: bool = True) -> pd.DataFrame:
    """Continuation loss with a full cache, and with uniform vs TAPPA layer budgets for each mean budget.

    ``kv_qsim``: ``[example, layer, head]`` (the ``kv`` variant, measured on the same prompt, as the
    reference does online). TAPPA budgets are capped at the prompt length (a layer cannot keep more
    tokens than there are), the excess going to the other layers. Rows ``kv_budget`` (per layer and
    policy, mean over examples) and ``kv_eviction_nll`` (mean next-token loss over the continuation
    targets, per policy and budget).
    """
    prompts = [max(1, int(n * config.kv_prompt_fraction)) for n in dataset.lengths]
    keep = [i for i, (p, n) in enumerate(zip(prompts, dataset.lengths, strict=True)) if n - p >= 2]
    if not keep:
        raise DatasetError("no text is long enough to have 2 continuation tokens after its prompt; use longer "
                           "texts or a smaller kv_prompt_fraction")
    data = _subset(dataset, keep)
    prompts = [prompts[i] for i in keep]
    layer_qsim = kv_qsim[keep].nanmean(-1)  # [example, layer]
    group = model.n_heads // model.architecture.n_kv_heads

    def continuation_nll(edits: dict[int, PatternEdit] | None) -> tuple[float, int]:
        nll = text_nll(model, data, 1, edits)
        values = torch.cat([nll[i, p:n - 1] for i, (p, n) in enumerate(zip(prompts, data.lengths, strict=True))])
        return float(values.mean()), int(values.numel())

    full, n_tokens = continuation_nll(None)
    rows = [{"metric": KV_EVICTION_NLL, "policy": "full", "budget": None, "value": full, "n_tokens": n_tokens}]
    for budget in config.kv_budgets:
        for policy in ("uniform", "tappa"):
            if policy == "uniform":
                budgets = torch.full((len(data), model.n_layers), budget, dtype=torch.long)
            else:
                budgets = torch.stack([layer_budgets(layer_qsim[i], budget, min_budget=config.kv_window,
                                                     max_budget=prompts[i] if prompts[i] >= budget else None)
                                       for i in range(len(data))])
            edits = eviction_edit(prompts, budgets, config.kv_window, config.kv_kernel, config.kv_gamma, group)
            value, n_tokens = continuation_nll(edits)
            rows.append({"metric": KV_EVICTION_NLL, "policy": policy, "budget": budget, "value": value,
                         "n_tokens": n_tokens})
            mean_budget = budgets.double().mean(0)
            rows.extend({"metric": KV_BUDGET, "policy": policy, "budget": budget, "layer": layer,
                         "value": float(mean_budget[layer])} for layer in range(model.n_layers))
    frame = pd.DataFrame(rows)
    frame["n_examples"] = len(data)
    frame["kv_prompt_fraction"] = config.kv_prompt_fraction
    return frame


def prune_rows(model: HookedModel, heldout: TokenDataset, bi: Tensor, q_sim: Tensor, config: TappaConfig,
               progress: bool = True) -> pd.DataFrame:
    """Pruning orders by Block Influence (``beta = 0``) and by TAPPA, and the held-out loss after removing
    the first ``k`` layers of each order (``prune_nll``; ``method`` none / bi / tappa, ``removed``)."""
    ks = [k for k in config.prune_ks if k < model.n_layers]
    if not ks:
        raise ConfigError(f"tappa.prune_ks {config.prune_ks} must remove fewer than the model's "
                          f"{model.n_layers} layers")
    rows: list[dict[str, object]] = []
    for method, beta in (("bi", 0.0), ("tappa", config.beta)):
        score, order = tappa_prune_scores(bi, q_sim, beta)
        rows.extend({"metric": PRUNE_SCORE, "method": method, "layer": layer, "value": float(score[layer]),
                     "rank": order.index(layer), "beta": beta} for layer in range(model.n_layers))
    base = text_nll(model, heldout, config.batch_size)
    rows.append({"metric": PRUNE_NLL, "method": "none", "k": 0, "removed": "", "value": float(base.nanmean())})
    for method, beta in (("bi", 0.0), ("tappa", config.beta)):
        _, order = tappa_prune_scores(bi, q_sim, beta)
        for k in ks:
            removed = sorted(order[:k])
            nll = text_nll(model, heldout, config.batch_size, hooks=skip_layers_hooks(model, removed))
            rows.append({"metric": PRUNE_NLL, "method": method, "k": k, "beta": beta,
                         "removed": ",".join(map(str, removed)), "value": float(nll.nanmean())})
    frame = pd.DataFrame(rows)
    frame["n_examples"] = len(heldout)
    return frame


def run_tappa(model: HookedModel, dataset: TokenDataset, config: TappaConfig | None = None,
              progress: bool = True) -> pd.DataFrame:
    """All TAPPA measurements on ``dataset``; returns tidy rows (``docs/metrics/tappa.md`` lists them).

    Per (layer, head), and per layer with ``head`` null (mean over heads): ``q_similarity`` (the kv
    variant: last ``kv_window`` tokens, post-RoPE) and ``q_similarity_prune`` (pre-RoPE windows);
    ``pattern_vertical`` / ``_diagonal`` / ``_periodic`` / ``_diffuse``, ``pattern_period`` and
    ``predictability`` (with the ``pattern_type`` label), ``rope_band_advantage`` / ``rope_band_share``
    (``band``, ``freq_hi``, ``freq_lo``). Per layer: ``block_influence``, ``prune_score``, ``kv_budget``.
    Model level: ``qsim_spearman`` (q-sim vs each pattern score over heads), ``kv_eviction_nll``,
    ``prune_nll``.
    """
    config = config or TappaConfig()
    check_config(config, data=False)
    if not model.causal:
        raise CapabilityError(f"TAPPA is defined for causal language models; {model.name} is bidirectional")
    if config.mode not in MODES:
        raise ConfigError(f"tappa.mode {config.mode!r} is not one of {', '.join(MODES)}")
    main = record_main(model, dataset, config, progress)
    kv_layer = main.kv_qsim.nanmean(0)  # [layer, head]
    scored, held = split_heldout(len(dataset), config.heldout_fraction) if config.prune_eval else (
        list(range(len(dataset))), [])
    windows = window_dataset(_subset(dataset, scored), config.prune_window, config.prune_stride)
    prune = record_prune(model, windows, config, progress)
    prune_head = prune.q_sim.nanmean(0)
    prune_layer = prune_head.mean(-1)
    bi = prune.bi.nanmean(0)
    parts = qsim_rows(kv_layer, prune_head, prune_layer, bi, config, len(windows))
    parts += pattern_rows(main.scores, pattern_criteria(config), {"kv": kv_layer, "prune": prune_head})
    if main.n_bands is not None:
        parts += band_rows(main.bands, main.n_bands, model.architecture.rotated_dims, model.architecture.rotary_base)
    if config.kv_eval:
        parts.append(kv_budget_rows(model, dataset, main.kv_qsim, config, progress))
    if config.prune_eval:
        parts.append(prune_rows(model, _subset(dataset, held), bi, prune_layer, config, progress))
    frame = pd.concat(parts, ignore_index=True)
    frame["mode"] = config.mode
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


def run_tappa_from_config(model: HookedModel, config: TappaConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: load and tokenise the texts, then :func:`run_tappa`."""
    check_config(config)
    return run_tappa(model, text_dataset(model, config), config, progress)


