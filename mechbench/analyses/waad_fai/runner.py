"""Model-running code of the WAAD/FAI analysis: transcripts, the recorded pass and the rows of a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechbench.analyses.waad_fai.config import DistanceConfig, check_config
from mechbench.analyses.waad_fai.metrics import _group_mean, kurtosis, split_heads
from mechbench.analyses.waad_fai.reducers import DistanceReducer
from mechbench.analyses.waad_fai.rows import (
    ANALYSIS,
    COLUMNS,
    ENTROPY,
    FAI,
    WAAD,
    _series_rows,
    coupling_statistics,
    head_rows,
    response_length_rows,
)
from mechbench.core.dataset import TokenDataset
from mechbench.core.decoding import greedy_decode
from mechbench.core.hooked import HookedModel
from mechbench.core.limits import check_context, check_layers
from mechbench.core.recorder import ATTENTION, Recorder
from mechbench.core.tidy import finish_rows
from mechbench.errors import ConfigError, DatasetError
from mechbench.stats import ranked_heads
from mechbench.tasks.niah import Template
from mechbench.tasks.reasoning import (
    Problem,
    Transcript,
    load_problems,
    load_transcripts,
    problem_prompt,
    token_pieces,
    tokenize_transcript,
)


def select_layers(n_layers: int, layers: Literal["all", "middle"] | Sequence[int], count: int = 5,
                  model: str = "the model") -> list[int]:
    """Recorded layers: ``all``; ``middle`` = ``count`` evenly spaced layers in ``floor(L/3) .. floor(2L/3)``
    (rounded, duplicates dropped; the paper's RL setup); or an explicit list (ConfigError naming ``model``
    when a layer is not one of its ``n_layers``)."""
    if layers == "all":
        return list(range(n_layers))
    if layers == "middle":
        return sorted(set(torch.linspace(n_layers // 3, 2 * n_layers // 3, count).round().long().tolist()))
    chosen = sorted(set(layers))
    if not chosen:
        raise ConfigError("waad_fai.layers is an empty list; name at least one layer or use 'all' / 'middle'")
    check_layers("waad_fai.layers", list(layers), chosen, n_layers, model,
                 f"give layers from 0 to {n_layers - 1} or use 'all' / 'middle'")
    return chosen



def transcript_dataset(model: HookedModel, transcripts: Sequence[Transcript]) -> TokenDataset:
    """Prompt ⊕ response ids as a dataset, after checking each transcript fits the context window."""
    if not transcripts:
        raise DatasetError("no transcripts; give at least one prompt with a response")
    if len({t.id for t in transcripts}) != len(transcripts):
        raise DatasetError("transcript ids repeat; give every transcript a unique id")
    n_ctx = model.architecture.n_ctx
    tokens = []
    for transcript in transcripts:
        n_prompt, n_response = transcript.prompt_ids.numel(), transcript.response_ids.numel()
        if n_prompt == 0 or n_response == 0:
            raise DatasetError(f"transcript {transcript.id!r} has an empty {'prompt' if n_prompt == 0 else 'response'}"
                               "; give both a prompt and a response")
        check_context(n_prompt + n_response, n_ctx, model.name,
                      f"transcript {transcript.id!r} has {n_prompt} prompt + {n_response} response tokens",
                      "lower max_new_tokens or shorten the transcript")
        model.check_token_ids(transcript.prompt_ids, f"transcript {transcript.id!r}")
        model.check_token_ids(transcript.response_ids, f"transcript {transcript.id!r}")
        tokens.append(torch.cat([transcript.prompt_ids, transcript.response_ids]).long())
    return TokenDataset(tokens=tokens, example_ids=[t.id for t in transcripts],
                        token_texts=[token_pieces(model, ids) for ids in tokens])


def generate_transcripts(model: HookedModel, problems: Sequence[Problem], max_new_tokens: int = 128,
                         template: Template = "auto", progress: bool = True) -> list[Transcript]:
    """The model's own greedy answer to each problem (:func:`mechbench.analyses.retrieval.greedy_decode`),
    stopping after the end-of-sequence token (kept in the response) or ``max_new_tokens``."""
    eos = model.tokenizer.eos_token_id if model.tokenizer is not None else None
    transcripts = []
    for problem in tqdm(problems, desc="answering", disable=not progress, unit="problem", leave=False):
        prompt = problem_prompt(model, problem, template)
        decoding = greedy_decode(model, prompt, max_new_tokens, stop_ids=() if eos is None else (int(eos),))
        transcripts.append(Transcript(id=problem.id, prompt_ids=prompt, response_ids=decoding.generated))
    return transcripts


def record_distance(model: HookedModel, dataset: TokenDataset, prompt_lengths: Sequence[int], config: DistanceConfig,
                    progress: bool = True) -> DistanceReducer:
    """One pass over ``dataset`` (each example a prompt of ``prompt_lengths[i]`` tokens and its response): head
    spans, WAAD and FAI of the config's layers and the response tokens' entropies, in a :class:`DistanceReducer`."""
    layers = select_layers(model.n_layers, config.layers, model=model.name)
    reducer = DistanceReducer(list(prompt_lengths), dataset.lengths, model.n_layers, model.n_heads, config.window,
                              config.h_lo, config.h_hi)
    Recorder(model, batch_size=config.batch_size, progress=progress).run(
        dataset, {ATTENTION: reducer}, layers=layers, description="attention distance", on_logits=reducer.keep_entropy,
        logits_from=reducer.first_logit, attention=config.attention)
    return reducer


def run_distance(model: HookedModel, transcripts: Sequence[Transcript], config: DistanceConfig | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Head spans, local/global groups, WAAD, FAI, entropies and the coupling checks on ``transcripts``.

    Options come from ``config`` (a :class:`DistanceConfig`; its data-source fields are not used here).
    Rows: ``head_span`` per (layer, head) (mean over examples, ``group`` local/global/neither,
    ``receiver``); ``receiver_score`` per (layer, head) (mean excess kurtosis of the head's FAI);
    per (example, position) with ``token``, ``response_position``: ``waad`` (``is_peak``), ``fai``
    (``head_set`` global/receiver, ``is_peak``) and ``entropy``; ``response_length`` per example
    (``prompt_length``, ``response`` text); ``coupling_*`` with ``value``, ``baseline``, ``n_events``.
    """
    config = config or DistanceConfig()
    check_config(config, data=False)
    dataset = transcript_dataset(model, transcripts)
    prompt_lengths = [t.prompt_ids.numel() for t in transcripts]
    reducer = record_distance(model, dataset, prompt_lengths, config, progress)
    spans = reducer.spans.nanmean(0)
    local, glob = split_heads(spans, config.local_frac, config.global_frac)
    receiver_score = torch.stack([kurtosis(per_head) for per_head in reducer.fai]).nanmean(0)
    receivers = [head for head in ranked_heads(receiver_score) if not torch.isnan(receiver_score[head])][:len(glob)]
    waad_series = [_group_mean(per_head, local) for per_head in reducer.waad]
    fai_series = {"global": [_group_mean(per_head, glob) for per_head in reducer.fai],
                  "receiver": [_group_mean(per_head, receivers) for per_head in reducer.fai]}

    rows = [head_rows(spans, receiver_score, local, glob, receivers, len(dataset)),
            _series_rows(dataset, prompt_lengths, waad_series, WAAD, config.peak_quantile, window=config.window,
                         n_heads=len(local)),
            *(_series_rows(dataset, prompt_lengths, fai_series[name], FAI, config.peak_quantile, head_set=name,
                           h_lo=config.h_lo, h_hi=config.h_hi, n_heads=len(glob)) for name in fai_series),
            _series_rows(dataset, prompt_lengths, reducer.entropy, ENTROPY),
            response_length_rows(dataset, prompt_lengths),
            coupling_statistics(waad_series, fai_series["global"], fai_series["receiver"], reducer.entropy,
                                quantile=config.peak_quantile, tolerance=config.tolerance,
                                follow_window=config.follow_window, n_random=config.n_random,
                                generator=torch.Generator().manual_seed(config.seed))]
    frame = pd.concat(rows, ignore_index=True)
    frame["local_frac"], frame["global_frac"] = config.local_frac, config.global_frac
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


def run_distance_from_config(model: HookedModel, config: DistanceConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: tokenise the transcript file, or answer the problems greedily, then
    :func:`run_distance`."""
    check_config(config)
    if config.transcripts is not None:
        transcripts = [tokenize_transcript(model, *texts) for texts in load_transcripts(config.transcripts,
                                                                                         config.limit)]
    else:
        transcripts = generate_transcripts(model, load_problems(config.problems, config.limit),
                                           config.max_new_tokens, config.template, progress)
    return run_distance(model, transcripts, config, progress)
