"""Options of the WAAD/FAI analysis and the checks that need no model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from mechbench.config import Seed, StrictModel
from mechbench.core.recorder import AttentionPath
from mechbench.errors import ConfigError
from mechbench.tasks.niah import Template
from mechbench.tasks.reasoning import BUILTIN, load_problems, load_transcripts


class DistanceConfig(StrictModel):
    """Options of the ``waad_fai`` analysis (config block ``analyses.waad_fai``; ``analyses.distance``, the old
    name, is accepted too)."""

    problems: str = Field(BUILTIN, description="'builtin' (12 arithmetic word problems) or a .jsonl of "
                          "{id, question}; the model answers each greedily")
    transcripts: str | None = Field(None, description="a .jsonl of {id, prompt, response} to analyse instead of "
                                    "the model's own answers")
    limit: PositiveInt | None = Field(None, description="use only the first N problems / transcripts")
    template: Template = Field("auto", description="prompt for the problems; auto = chat when the tokenizer has "
                               "a chat template")
    max_new_tokens: PositiveInt = Field(128, description="longest generated response (tokens)")
    layers: Literal["all", "middle"] | list[NonNegativeInt] = Field(
        "all", description="heads of these layers: all (the paper's analysis), middle (5 evenly spaced layers in "
        "the middle third, the paper's RL setup) or a list")
    local_frac: float = Field(0.3, gt=0.0, lt=1.0, description="share of heads with the shortest span (local)")
    global_frac: float = Field(0.3, gt=0.0, lt=1.0, description="share of heads with the longest span (global)")
    window: PositiveInt = Field(10, description="WAAD distance cap W (paper: 10)")
    h_lo: NonNegativeInt = Field(1, description="FAI horizon start: rows t >= s + h_lo (analysis: 1 [INFERRED]; "
                                 "RL: 10)")
    h_hi: PositiveInt | None = Field(None, description="FAI horizon end: rows t <= s + h_hi (None = end of the "
                                     "response, the analysis setting; RL: 100)")
    peak_quantile: float = Field(0.9, ge=0.0, lt=1.0, description="[INFERRED] peaks are local maxima at or above "
                                 "this quantile of their series")
    tolerance: NonNegativeInt = Field(1, description="[INFERRED] receiver and global FAI peaks co-occur within "
                                      "this many tokens")
    follow_window: NonNegativeInt = Field(3, description="[INFERRED] an FAI peak follows a WAAD peak at most this "
                                          "many tokens before it (or at it)")
    n_random: PositiveInt = Field(20, description="random-position draws per example for the baselines")
    seed: Seed = Field(0, description="seed of the random-position baselines")
    batch_size: PositiveInt = Field(1, description="transcripts per forward pass (memory grows with it)")
    attention: AttentionPath = Field("auto", description="how pattern rows are read: fused (rebuilt block by block "
                                     "from q, k and the softmax normaliser; memory linear in the context), eager "
                                     "(hook_pattern, one [head, T, T] per layer) or auto (fused where the model "
                                     "supports it)")


def check_config(config: DistanceConfig, data: bool = True) -> None:
    """Fail before any model is loaded on inconsistent options or (``data``) a missing or empty data file."""
    if config.local_frac + config.global_frac > 1:
        raise ConfigError(f"waad_fai.local_frac + global_frac = {config.local_frac + config.global_frac:g} is above "
                          "1, so the groups overlap; lower one of them")
    if config.h_hi is not None and config.h_hi < config.h_lo:
        raise ConfigError(f"waad_fai.h_hi ({config.h_hi}) is below waad_fai.h_lo ({config.h_lo}); no row is in the "
                          "FAI horizon — raise h_hi or lower h_lo")
    if data:
        if config.transcripts is not None:
            load_transcripts(config.transcripts, config.limit)
        else:
            load_problems(config.problems, config.limit)
