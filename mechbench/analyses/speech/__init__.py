"""Cross-attention vs input saliency in speech-to-text (Papi et al. 2025, "Cross-Attention is Half Explanation
in Speech-to-Text Models", arXiv 2509.18010), on Whisper.

For each generated token ``y_i`` of a greedy transcription (``docs/metrics/attribution.md``, section
"Speech-to-text"):

* cross-attention ``CA^{(l,h)}[i, t'] = softmax(Q K^T / sqrt(d_k))`` over the ``T'`` encoder frames, read at
  the decoder query row that predicts ``y_i``; aggregation levels ``head`` (one ``(l, h)``), ``layer``
  (mean over the heads of ``l``) and ``all`` (mean over every layer and head);
* saliency of the log-mel input ``X in R^{F x T}`` for ``f_i(X) = log p(y_i | X, y_<i)``: ``gradient``
  ``|df_i / dX[f, t]|`` (Simonyan et al. 2014), or ``occlusion`` ``f_i(X) - f_i(X with patch P replaced)``
  over time-frequency patches (captum ``FeatureAblation`` with a 2-D feature mask; the perturbation
  counterpart of Papi et al.'s SPES saliency, Fucci et al. 2024);
* saliency pooled to the cross-attention's resolution: over frequency, then ``T = 2 T'`` mel frames to the
  ``T'`` encoder frames (Whisper's stride-2 convolution), by ``max`` (2-D max pooling, the paper's best) or
  ``mean``;
* agreement: Pearson (the paper's statistic) and Spearman correlation between the flattened ``I x T'``
  cross-attention and saliency maps of an utterance, and per token over ``T'``;
* word error rate of the transcription against the text that was spoken.

The comparison restricted to the frames that hold audio (Whisper pads every input to 30 s), and
occlusion as the perturbation method, are [INFERRED] adaptations: the paper's Conformer models see no
padding and its SPES saliency clusters spectrogram regions rather than using fixed patches.
"""

from __future__ import annotations

from mechbench.analyses import AnalysisSpec
from mechbench.analyses.speech.config import SpeechConfig, check_config
from mechbench.analyses.speech.metrics import (
    LogProbs,
    Pooling,
    SaliencyMethod,
    cross_attention_levels,
    gradient_saliency,
    map_correlations,
    normalize_words,
    occlusion_replacement,
    occlusion_saliency,
    patch_mask,
    pool_saliency,
    word_error_rate,
    word_errors,
)
from mechbench.analyses.speech.rows import (
    ANALYSIS,
    COLUMNS,
    CROSS_ATTENTION,
    INT_COLUMNS,
    LOG_MEL,
    SALIENCY_PREFIX,
    WER,
    XATTN_SALIENCY_PEARSON,
    XATTN_SALIENCY_PREFIX,
    _levels,
    _map_rows,
    correlation_rows,
    wer_rows,
)
from mechbench.analyses.speech.runner import analyze_utterance, run_speech, run_speech_from_config, utterance_audio

__all__ = [
    "ANALYSIS",
    "COLUMNS",
    "CROSS_ATTENTION",
    "INT_COLUMNS",
    "LOG_MEL",
    "SALIENCY_PREFIX",
    "SPEC",
    "WER",
    "XATTN_SALIENCY_PEARSON",
    "XATTN_SALIENCY_PREFIX",
    "LogProbs",
    "Pooling",
    "SaliencyMethod",
    "SpeechConfig",
    "_levels",
    "_map_rows",
    "analyze_utterance",
    "check_config",
    "correlation_rows",
    "cross_attention_levels",
    "gradient_saliency",
    "map_correlations",
    "normalize_words",
    "occlusion_replacement",
    "occlusion_saliency",
    "patch_mask",
    "pool_saliency",
    "run_speech",
    "run_speech_from_config",
    "utterance_audio",
    "wer_rows",
    "word_error_rate",
    "word_errors",
]

SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="speech-to-text (Whisper): cross-attention per head / layer / all layers vs gradient and "
                "occlusion saliency of the log-mel input, pooled to the encoder frames; word error rate",
    citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010)",
    config_model=SpeechConfig,
    run=run_speech_from_config,
    headline_metrics=(XATTN_SALIENCY_PEARSON,),
    check=check_config,
    figures="mechbench.analyses.speech.figures",
    columns=COLUMNS,
)
