"""Options of the head-roles analysis (config block ``analyses.head_roles``)."""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveInt

from mechbench.config import Seed, StrictModel


class HeadRolesConfig(StrictModel):
    """Options of the ``head_roles`` analysis: previous-token and induction scores on repeated random blocks."""

    n_examples: PositiveInt = Field(16, description="probe sequences [BOS] + r + r, each with its own block r")
    block_length: int = Field(32, ge=2, description="tokens of the random block r (a sequence has 1 + 2L tokens)")
    low: NonNegativeInt | None = Field(None, description="smallest token id a block may use (default: above the "
                                       "tokenizer's special tokens; 1 for models without a tokenizer)")
    distinct: bool = Field(True, description="draw a block's tokens without replacement, so every query of the "
                           "second copy has exactly one earlier occurrence to attend after")
    seed: Seed = Field(0, description="seed of the random blocks")
    batch_size: PositiveInt = Field(16, description="sequences per forward pass")
