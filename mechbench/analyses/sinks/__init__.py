"""Attention sinks: sink scores, sink rate, hidden sinks, massive activations, ACT, StreamingLLM.

Definitions (``docs/metrics/sinks.md``):

* Sink score (Gu et al. 2024, "When Attention Sink Emerges in Language Models", arXiv 2410.10781,
  ``sail-sg/Attention-Sink`` ``eval_sink_open_source.py``; the same form is ACT's detector,
  Yu et al. 2024, ``GATECH-EIC/ACT``): the mean attention key ``k`` receives from the queries that
  can see it. For a causal pattern ``A`` of ``T`` tokens (0-indexed),
  ``alpha[l, h, k] = 1 / (T - k) * sum_{t=k}^{T-1} A[l, h, t, k]``.
  For a bidirectional (encoder) pattern every query sees every key, so the divisor is ``T``.
* Sink rate ``Sink_k^eps`` (Gu et al.): the percentage of (example, layer, head) triples with
  ``alpha[l, h, k] > eps``; the paper uses ``eps = 0.3`` on the first ``T = 64`` tokens.

* Hidden sinks (ACT, Yu et al. 2024, ``GATECH-EIC/ACT`` ``models/llama_modelling_aug.py``): per head and input, the
  positions whose sink score exceeds 0.1, minus the first such position (normally position 0).
* Massive activations (Sun et al. 2024, ``locuslab/massive-activations`` ``main_llm.py --exp2``):
  per layer, the top ``|h|`` entries of the residual stream over tokens x channels and the median
  ``|h|``; massive when ``> 100`` and ``>= 1000x`` the median.
* ACT calibration and StreamingLLM's start+recent cache: interventions on the pattern, see
  :func:`mechbench.core.interventions.calibrate_attention` and
  :func:`mechbench.core.interventions.start_recent_keys`.

The runner :func:`run_sinks` streams one layer's pattern at a time through the Recorder and keeps
only ``[heads, T]`` per layer and example, never the ``layers x heads x T x T`` cache.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec

from .config import CalibrationConfig, SinksConfig, StreamingConfig, check_config
from .metrics import (
    _mean_margin,
    hidden_sinks,
    massive_activations,
    received_attention,
    scores_from_received,
    sink_rate,
    sink_scores,
)
from .reducers import MassiveActivationReducer, SinkScoreReducer
from .rows import (
    ACT_ACCURACY,
    ACT_SEARCH_DELTA,
    ACT_TEXT_NLL,
    ANALYSIS,
    COLUMNS,
    HIDDEN_SINK,
    HIDDEN_SINK_COUNT,
    HIDDEN_SINK_TOKEN,
    MASSIVE_ACTIVATION,
    RESID_ABS_MEDIAN,
    SINK_RATE,
    SINK_SCORE,
    SINK_SCORE_MEAN,
    STREAMING_NLL,
    STREAMING_TOKEN_NLL,
    MassiveCriteria,
    _hidden_sink_rows,
    _massive_rows,
    _score_rows,
)
from .runner import (
    act_edits,
    default_calibration_layers,
    run_calibration,
    run_sinks,
    run_sinks_from_config,
    run_streaming,
    search_calibration_heads,
)

__all__ = [
    "ACT_ACCURACY",
    "ACT_SEARCH_DELTA",
    "ACT_TEXT_NLL",
    "ANALYSIS",
    "COLUMNS",
    "HIDDEN_SINK",
    "HIDDEN_SINK_COUNT",
    "HIDDEN_SINK_TOKEN",
    "MASSIVE_ACTIVATION",
    "RESID_ABS_MEDIAN",
    "SINK_RATE",
    "SINK_SCORE",
    "SINK_SCORE_MEAN",
    "SPEC",
    "STREAMING_NLL",
    "STREAMING_TOKEN_NLL",
    "CalibrationConfig",
    "MassiveActivationReducer",
    "MassiveCriteria",
    "SinkScoreReducer",
    "SinksConfig",
    "StreamingConfig",
    "_hidden_sink_rows",
    "_massive_rows",
    "_mean_margin",
    "_score_rows",
    "act_edits",
    "check_config",
    "default_calibration_layers",
    "hidden_sinks",
    "massive_activations",
    "received_attention",
    "run_calibration",
    "run_sinks",
    "run_sinks_from_config",
    "run_streaming",
    "scores_from_received",
    "search_calibration_heads",
    "sink_rate",
    "sink_scores",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="attention sinks: sink scores and rate, hidden sinks, massive activations, ACT calibration, "
                "StreamingLLM cache check",
    citation="Gu et al. 2024, When Attention Sink Emerges in Language Models (arXiv 2410.10781)",
    config_model=SinksConfig,
    run=run_sinks_from_config,
    headline_metrics=(SINK_SCORE_MEAN,),
    headline_position=0,
    check=check_config,
    figures="mechbench.analyses.sinks.figures",
    columns=COLUMNS,
    text_sharded=True,
    context_length_options=lambda length: {"max_tokens": length},
)
