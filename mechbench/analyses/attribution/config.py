"""Options of the attribution analysis and the checks they need no model for."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from mechbench.config import Seed, StrictModel
from mechbench.errors import ConfigError
from mechbench.tasks.grounding import BUILTIN, load_grounded, load_target_prompts

Method = Literal["saliency", "input_x_gradient", "integrated_gradients", "occlusion"]
METHODS: tuple[Method, ...] = ("saliency", "input_x_gradient", "integrated_gradients", "occlusion")
GRADIENT_METHODS: tuple[Method, ...] = ("saliency", "input_x_gradient", "integrated_gradients")
View = Literal["head", "layer", "all", "rollout"]
VIEWS: tuple[View, ...] = ("head", "layer", "all", "rollout")
Replacement = Literal["zero", "pad", "mean", "drop"]
TargetKind = Literal["next_token", "span", "logit_diff"]


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
    ig_tolerance: float | None = Field(None, gt=0, description="largest relative completeness error "
                                       "|sum IG - (f(x) - f(baseline))| / |f(x) - f(baseline)| accepted: examples "
                                       "above it are integrated again with twice the points, up to ig_max_steps, "
                                       "and flagged ig_converged = false if they never meet it (null: ig_steps once)")
    ig_max_steps: PositiveInt = Field(256, description="cap on the points of one example's integral under "
                                      "ig_tolerance")
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

    @model_validator(mode="after")
    def _cap_holds_the_first_integral(self) -> AttributionConfig:
        if self.ig_tolerance is not None and self.ig_max_steps < self.ig_steps:
            raise ValueError(f"ig_max_steps ({self.ig_max_steps}) is below ig_steps ({self.ig_steps}); raise the cap "
                             "or lower ig_steps")
        return self


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
