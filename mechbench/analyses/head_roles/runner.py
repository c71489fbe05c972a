"""Model-running code of the head-roles analysis: the repeated-block probe, one recorded pass for both
scores, and the rows of a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch
from torch import Tensor

from mechbench.core.dataset import Batch, TokenDataset
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context
from mechbench.core.recorder import Recorder
from mechbench.core.tidy import finish_rows
from mechbench.errors import ConfigError
from mechbench.tasks.repeated import repeated_random_tokens

from .config import HeadRolesConfig
from .metrics import induction_score, previous_token_score
from .rows import ANALYSIS, COLUMNS, INDUCTION_SCORE, PREVIOUS_TOKEN_SCORE, score_rows


def probe_tokens(model: HookedModel, config: HeadRolesConfig) -> tuple[Tensor, bool]:
    """``([n, (1) + 2L] token ids, has_bos)``: the model's BOS (when its tokenizer has one; token 0 for
    the toy models, which have none) then a random block twice; block tokens start above the special ids."""
    tokenizer = model.tokenizer
    bos = 0 if tokenizer is None else tokenizer.bos_token_id
    low = config.low
    if low is None:
        special = [] if tokenizer is None else [int(i) for i in tokenizer.all_special_ids]
        low = max(special, default=0) + 1
    length = (bos is not None) + 2 * config.block_length
    check_context(length, model.architecture.n_ctx, model.name, f"a head_roles probe of 1 + 2 x {config.block_length} "
                  "tokens", "lower head_roles.block_length")
    try:
        tokens = repeated_random_tokens(config.n_examples, config.block_length, model.vocab_size, config.seed,
                                        bos, low, config.distinct)
    except ValueError as exc:
        raise ConfigError(f"head_roles: {exc} (the vocabulary of {model.name}); lower block_length or low, or set "
                          "distinct: false") from None
    return tokens, bos is not None


def mean_pattern_scores(model: HookedModel, tokens: Tensor, metrics: Mapping[str, Callable[[Tensor], Tensor]],
                        batch_size: int = 16, progress: bool = False) -> dict[str, Tensor]:
    """``{name: [layer, head]}`` (float64): each ``metric(pattern) -> [batch, head]`` averaged over the
    equal-length sequences ``tokens``, all of them from one recorded pass."""
    totals = {name: torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64) for name in metrics}

    def reducer(layer: int, pattern: Tensor, batch: Batch) -> None:
        for name, metric in metrics.items():
            totals[name][layer] += metric(pattern).double().sum(0).cpu()

    dataset = TokenDataset(tokens=list(tokens), example_ids=[str(i) for i in range(len(tokens))],
                           token_texts=[[] for _ in range(len(tokens))])
    Recorder(model, batch_size=batch_size, progress=progress).run(dataset, {"pattern": reducer},
                                                                  description="head roles")
    return {name: total / len(tokens) for name, total in totals.items()}


def induction_scores(model: HookedModel, tokens: Tensor, block_length: int, has_bos: bool = True) -> Tensor:
    """``[layer, head]`` induction scores on repeated-token sequences ``tokens``."""
    scores = mean_pattern_scores(model, tokens, {INDUCTION_SCORE: lambda p: induction_score(p, block_length, has_bos)})
    return scores[INDUCTION_SCORE]


def previous_token_scores(model: HookedModel, tokens: Tensor) -> Tensor:
    """``[layer, head]`` previous-token scores on ``tokens`` (any equal-length sequences)."""
    return mean_pattern_scores(model, tokens, {PREVIOUS_TOKEN_SCORE: previous_token_score})[PREVIOUS_TOKEN_SCORE]


def run_head_roles(model: HookedModel, config: HeadRolesConfig | None = None, progress: bool = True) -> pd.DataFrame:
    """Previous-token and induction scores of every head on the configured probe, as tidy rows."""
    config = config or HeadRolesConfig()
    tokens, has_bos = probe_tokens(model, config)
    scores = mean_pattern_scores(model, tokens, {
        PREVIOUS_TOKEN_SCORE: previous_token_score,
        INDUCTION_SCORE: lambda p: induction_score(p, config.block_length, has_bos)},
        config.batch_size, progress)
    frame = score_rows(scores[PREVIOUS_TOKEN_SCORE], scores[INDUCTION_SCORE], config.n_examples, config.block_length)
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)
