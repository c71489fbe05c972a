"""Tidy rows of the head-roles analysis, and its metric names."""

from __future__ import annotations

import pandas as pd
from torch import Tensor

from mechbench.core.tidy import ExtraColumns, to_tidy

ANALYSIS = "head_roles"
PREVIOUS_TOKEN_SCORE = "previous_token_score"
INDUCTION_SCORE = "induction_score"

#: The analysis's own columns and their dtypes.
COLUMNS = ExtraColumns(ints=("n_examples", "block_length"))


def score_rows(previous: Tensor, induction: Tensor, n_examples: int, block_length: int) -> pd.DataFrame:
    """``[layer, head]`` previous-token and induction scores as one row per head and metric."""
    return pd.concat([to_tidy(scores, ("layer", "head"), metric=metric, n_examples=n_examples,
                              block_length=block_length)
                      for metric, scores in ((PREVIOUS_TOKEN_SCORE, previous), (INDUCTION_SCORE, induction))],
                     ignore_index=True)
