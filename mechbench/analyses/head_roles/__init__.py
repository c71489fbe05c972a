"""Head roles: previous-token and induction scores of every head (Olsson et al. 2022).

Both are read off one pass over ``n_examples`` probe sequences ``[BOS] + r + r`` (``r`` a random block
of ``block_length`` tokens): the previous-token score averages ``A[t, t-1]`` over every position, the
induction score ``A[t, t-L+1]`` over the second copy (the token after the earlier occurrence of the
current one, TransformerLens' convention). Definitions and options: ``docs/metrics/head-roles.md``.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec

from .config import HeadRolesConfig
from .metrics import induction_score, previous_token_score
from .rows import ANALYSIS, COLUMNS, INDUCTION_SCORE, PREVIOUS_TOKEN_SCORE, score_rows
from .runner import (
    induction_scores,
    mean_pattern_scores,
    previous_token_scores,
    probe_tokens,
    run_head_roles,
)

__all__ = [
    "ANALYSIS",
    "COLUMNS",
    "INDUCTION_SCORE",
    "PREVIOUS_TOKEN_SCORE",
    "SPEC",
    "HeadRolesConfig",
    "induction_score",
    "induction_scores",
    "mean_pattern_scores",
    "previous_token_score",
    "previous_token_scores",
    "probe_tokens",
    "run_head_roles",
    "score_rows",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="previous-token and induction scores of every head on repeated random blocks",
    citation="Olsson et al. 2022, In-context Learning and Induction Heads (Transformer Circuits Thread)",
    config_model=HeadRolesConfig,
    run=run_head_roles,
    headline_metrics=(INDUCTION_SCORE, PREVIOUS_TOKEN_SCORE),
    figures="mechbench.analyses.head_roles.figures",
    columns=COLUMNS,
)
