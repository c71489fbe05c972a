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

import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses import AnalysisSpec
from mechbench.config import StrictModel
from mechbench.core.audio import SAMPLE_RATE, read_wav, synthesize
from mechbench.core.hooked import HookedModel
from mechbench.core.pooling import pool_to_length
from mechbench.core.speech import SpeechModel
from mechbench.core.tidy import complete_columns, to_tidy
from mechbench.errors import CapabilityError, DatasetError
from mechbench.stats import pearson, spearman
from mechbench.tasks.speech import BUILTIN, Utterance, load_utterances

ANALYSIS = "speech"
SaliencyMethod = Literal["gradient", "occlusion"]
Pooling = Literal["max", "mean"]
LogProbs = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- cross-attention
def cross_attention_levels(attention: Tensor) -> dict[str, Tensor]:
    """Aggregation levels of cross-attention ``[layer, head, I, T']`` (Papi et al. 2025): ``head`` (as is),
    ``layer`` ``[layer, I, T']`` (mean over heads) and ``all`` ``[I, T']`` (mean over layers and heads)."""
    layer = attention.mean(1)
    return {"head": attention, "layer": layer, "all": layer.mean(0)}


# ---------------------------------------------------------------------------- saliency
def gradient_saliency(logprobs: LogProbs, features: Tensor) -> Tensor:
    """``|d log p(y_i | X) / dX|`` for every generated token ``i`` (Simonyan et al. 2014): ``[I, F, T]``.

    ``logprobs`` maps a batch of log-mel inputs ``[N, F, T]`` to ``[N, I]``; one forward pass, then one
    backward pass per token through the retained graph.
    """
    leaf = features.detach().clone()[None].requires_grad_(True)
    values = logprobs(leaf)[0]
    grads = [torch.autograd.grad(value, leaf, retain_graph=i + 1 < len(values))[0][0]
             for i, value in enumerate(values)]
    return torch.stack(grads).abs().detach()


def patch_mask(n_mel: int, n_frames: int, patch_bins: int, patch_frames: int) -> Tensor:
    """Feature ids of a grid of ``patch_bins x patch_frames`` time-frequency patches over ``[n_mel, n_frames]``
    (edge patches are smaller): ``[n_mel, n_frames]`` with ids ``0..n_patches-1``."""
    bins = torch.arange(n_mel) // patch_bins
    frames = torch.arange(n_frames) // patch_frames
    return bins[:, None] * (int(frames.max()) + 1) + frames[None, :]


def occlusion_saliency(logprobs: LogProbs, features: Tensor, replacement: float, n_frames: int, patch_bins: int,
                       patch_frames: int, perturbations_per_eval: int = 1) -> Tensor:
    """Occlusion ``log p(y_i | X) - log p(y_i | X with patch P set to replacement)`` (Zeiler & Fergus 2014) for
    every token ``i``, every position of patch ``P`` carrying its patch's effect: ``[I, F, T]``.

    Only the first ``n_frames`` mel frames are occluded (the audio; later frames are 0). captum's
    ``FeatureAblation`` runs over a batch of one input with a ``[I]``-valued output, so one pass of the
    patches gives every token's effect.
    """
    from captum.attr import FeatureAblation

    fixed = features[:, n_frames:]

    def forward(part: Tensor) -> Tensor:
        return logprobs(torch.cat([part, fixed.expand(part.shape[0], -1, -1)], -1))

    mask = patch_mask(features.shape[0], n_frames, patch_bins, patch_frames)[None]
    with torch.no_grad():
        effects = FeatureAblation(forward).attribute(features[None, :, :n_frames], baselines=replacement,
                                                     feature_mask=mask,
                                                     perturbations_per_eval=perturbations_per_eval)
    out = torch.zeros(effects.shape[0], *features.shape, dtype=effects.dtype)
    out[..., :n_frames] = effects.detach().cpu()
    return out


def pool_saliency(saliency: Tensor, n_frames: int, how: Pooling = "max") -> Tensor:
    """2-D pooling of a spectrogram map ``[..., F, T]`` to ``[..., n_frames]``: over all frequency bins, then
    time by :func:`~mechbench.analyses.attribution.pool_to_length` (``T = 2 n_frames``: pairs of mel frames
    per encoder frame). Papi et al. found max pooling best; ``mean`` is average pooling."""
    over_frequency = saliency.amax(-2) if how == "max" else saliency.mean(-2)
    return pool_to_length(over_frequency, n_frames, how)


# ---------------------------------------------------------------------------- agreement
def map_correlations(attention: Tensor, saliency: Tensor) -> dict[str, Tensor]:
    """Pearson and Spearman r between attention maps ``[..., I, T']`` and a saliency map ``[I, T']``:
    ``pearson`` / ``spearman`` of the flattened ``I x T'`` maps (Papi et al.'s global correlation) ``[...]``,
    ``pearson_token`` / ``spearman_token`` per token over ``T'`` ``[..., I]``."""
    flat_attention, flat_saliency = attention.flatten(-2), saliency.flatten(-2)
    return {"pearson": pearson(flat_attention, flat_saliency), "spearman": spearman(flat_attention, flat_saliency),
            "pearson_token": pearson(attention, saliency), "spearman_token": spearman(attention, saliency)}


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation (apostrophes inside words kept): the WER's units."""
    return re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower()).split()


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance: the fewest substitutions, deletions and insertions turning
    ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, start=1):
        current = [i]
        for j, other in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """``WER = (S + D + I) / N`` over normalised words (:func:`normalize_words`), ``N`` the reference's words."""
    words = normalize_words(reference)
    if not words:
        raise DatasetError(f"reference {reference!r} has no words; give the text that was said")
    return word_errors(words, normalize_words(hypothesis)) / len(words)


# ---------------------------------------------------------------------------- config
class SpeechConfig(StrictModel):
    """Options of the ``speech`` analysis (config block ``analyses.speech``)."""

    utterances: str = Field(BUILTIN, description="'builtin' (6 sentences spoken by espeak-ng) or a .jsonl of "
                            "{id, text} (synthesised) or {id, wav, text} (your 16 kHz mono recording)")
    limit: PositiveInt | None = Field(None, description="use only the first N utterances")
    methods: list[SaliencyMethod] = Field(["gradient", "occlusion"], min_length=1,
                                          description="saliency of the log-mel input: gradient, occlusion")
    pooling: Pooling = Field("max", description="2-D pooling of saliency to the encoder frames (max: the paper's "
                             "best; mean: average pooling)")
    frames: Literal["audio", "all"] = Field("audio", description="frames compared: those holding audio, or all "
                                            "1500 (with Whisper's padding to 30 s)")
    absolute: bool = Field(True, description="correlate attention with |occlusion effect| (else the signed effect)")
    patch_bins: PositiveInt = Field(20, description="mel bins per occlusion patch")
    patch_frames: PositiveInt = Field(20, description="mel frames (10 ms each) per occlusion patch")
    occlusion_value: Literal["floor", "zero", "mean"] = Field(
        "floor", description="value of an occluded patch: the log-mel floor (what silence and padding take), "
        "0, or the mean of the utterance's audio frames")
    perturbations_per_eval: PositiveInt = Field(4, description="occluded inputs per forward pass")
    resample: bool = Field(True, description="resample WAV files that are not 16 kHz (else refuse them)")
    voice: str = Field("en-us", pattern=r"^[A-Za-z0-9_+/-]+$", description="espeak-ng voice of synthesised "
                       "utterances (`espeak-ng --voices` lists them)")
    words_per_minute: int = Field(150, ge=80, le=450, description="espeak-ng speaking rate (80..450)")
    max_new_tokens: PositiveInt = Field(64, description="longest transcription (tokens)")
    maps_for: NonNegativeInt = Field(1, description="store the log-mel, cross-attention and saliency maps of the "
                                     "first N utterances (for the spectrogram overlay)")


def check_config(config: SpeechConfig) -> None:
    """Fail before the model is loaded on a bad utterance file, unreadable audio or a missing espeak-ng."""
    utterances = load_utterances(config.utterances, config.limit)
    for utterance in utterances:
        if utterance.wav is not None:
            read_wav(utterance.wav, SAMPLE_RATE if config.resample else None)
    if any(utterance.wav is None for utterance in utterances):  # espeak-ng is there and knows the voice
        with tempfile.TemporaryDirectory() as tmp:
            synthesize("check", Path(tmp) / "check.wav", config.voice, config.words_per_minute)


# ---------------------------------------------------------------------------- runner
def utterance_audio(utterance: Utterance, config: SpeechConfig, directory: Path) -> np.ndarray:
    """16 kHz mono samples of an utterance: its WAV file, or espeak-ng's speech of its text (resampled)."""
    if utterance.wav is not None:
        return read_wav(utterance.wav, SAMPLE_RATE if config.resample else None)
    wav = synthesize(utterance.text, directory / f"{len(list(directory.iterdir()))}.wav", config.voice,
                     config.words_per_minute)
    return read_wav(wav, SAMPLE_RATE)


def occlusion_replacement(features: Tensor, n_mel_frames: int, how: str) -> float:
    """The log-mel value an occluded patch takes: the floor (the minimum; Whisper clamps log-mel at max - 8, so
    silence and padding sit there), 0, or the mean of the audio frames."""
    if how == "floor":
        return float(features.min())
    return 0.0 if how == "zero" else float(features[:, :n_mel_frames].mean())


def _levels(attention: Tensor, saliency: Tensor) -> pd.DataFrame:
    """Correlation rows of every aggregation level against one pooled saliency map ``[I, T']``."""
    levels = cross_attention_levels(attention)
    frames = []
    for level, axes in (("head", ("layer", "head")), ("layer", ("layer",)), ("all", ())):
        for name, values in map_correlations(levels[level], saliency).items():
            metric = "xattn_saliency_" + name
            frames.append(to_tidy(values, (*axes, "position") if name.endswith("token") else axes,
                                  drop_nan=False, metric=metric, level=level))
    return pd.concat(frames, ignore_index=True)


def _map_rows(model: SpeechModel, features: Tensor, attention: Tensor, saliency: dict[str, Tensor],
              n_frames: int, tokens: list[str]) -> pd.DataFrame:
    """Log-mel (averaged to the encoder frame rate), all-layer cross-attention and pooled saliency maps."""
    mel = pool_to_length(features[:, :2 * n_frames].double().cpu(), n_frames, "mean")
    frames = [to_tidy(mel, ("mel", "frame"), metric="log_mel")]
    maps = {"cross_attention": cross_attention_levels(attention)["all"]} | {
        f"saliency_{method}": values for method, values in saliency.items()}
    for metric, values in maps.items():
        rows = to_tidy(values, ("position", "frame"), metric=metric, level="all" if metric == "cross_attention"
                       else None, method=None if metric == "cross_attention" else metric.removeprefix("saliency_"))
        rows["token"] = [tokens[p] for p in rows["position"]]
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def analyze_utterance(model: SpeechModel, utterance: Utterance, audio: np.ndarray, config: SpeechConfig,
                      with_maps: bool) -> pd.DataFrame:
    """WER, and cross-attention vs saliency correlations of one utterance, as tidy rows."""
    features = model.log_mel(audio)
    generated = model.transcribe(features, config.max_new_tokens)
    transcript = model.decode(generated)
    wer = pd.DataFrame({"metric": ["wer"], "value": [word_error_rate(utterance.text, transcript)],
                        "transcript": [transcript], "reference": [utterance.text],
                        "n_reference_words": [len(normalize_words(utterance.text))]})
    if not generated:
        return wer
    audio_frames = model.audio_frames(len(audio))
    n_frames = audio_frames if config.frames == "audio" else model.n_encoder_frames
    with torch.no_grad():
        _, attention = model.decoder_logits(features[None], generated, cross_attention=True)
    attention = attention[0, ..., :n_frames].double().cpu()

    def logprobs(batch: Tensor) -> Tensor:
        return model.token_logprobs(batch, generated)

    saliency: dict[str, Tensor] = {}
    for method in config.methods:
        if method == "gradient":
            raw = gradient_saliency(logprobs, features)
        else:
            replacement = occlusion_replacement(features, 2 * audio_frames, config.occlusion_value)
            raw = occlusion_saliency(logprobs, features, replacement, 2 * n_frames, config.patch_bins,
                                     config.patch_frames, config.perturbations_per_eval)
            raw = raw.abs() if config.absolute else raw
        saliency[method] = pool_saliency(raw.double().cpu(), model.n_encoder_frames, config.pooling)[:, :n_frames]
    tokens = [model.decode([token]) for token in generated]
    frames = [wer]
    for method, values in saliency.items():
        rows = _levels(attention, values).assign(method=method)
        rows["token"] = [tokens[int(p)] if pd.notna(p) else None for p in rows.get("position", [None] * len(rows))]
        frames.append(rows)
    if with_maps:
        frames.append(_map_rows(model, features, attention, saliency, n_frames, tokens))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_frames"] = n_frames
    frame["n_tokens"] = len(generated)
    frame["transcript"] = transcript
    return frame


INT_COLUMNS = ("layer", "head", "position", "frame", "mel", "n_frames", "n_tokens", "n_reference_words")


def run_speech(model: HookedModel, utterances: Sequence[Utterance], config: SpeechConfig | None = None,
               progress: bool = True) -> pd.DataFrame:
    """Transcribe each utterance, compare cross-attention with saliency per aggregation level, as tidy rows
    (see ``docs/metrics/attribution.md``)."""
    config = config or SpeechConfig()
    if not isinstance(model, SpeechModel):
        raise CapabilityError(f"the speech analysis needs a speech-to-text model with cross-attention, and "
                              f"{model.name} has none; run it with --model whisper-tiny-en (or a Whisper directory)")
    if not utterances:
        raise DatasetError("no utterances; give at least one {id, text} or {id, wav, text}")
    frames = []
    with tempfile.TemporaryDirectory(prefix="mechbench-speech-") as tmp:
        for index, utterance in enumerate(tqdm(utterances, desc="speech", disable=not progress, unit="utterance",
                                               leave=False)):
            audio = utterance_audio(utterance, config, Path(tmp))
            frame = analyze_utterance(model, utterance, audio, config, with_maps=index < config.maps_for)
            frame["example"] = utterance.id
            frame["seconds"] = len(audio) / SAMPLE_RATE
            frames.append(frame)
    frame = complete_columns(pd.concat(frames, ignore_index=True), INT_COLUMNS, ("level", "method", "token"))
    frame["pooling"] = config.pooling
    frame["frames"] = config.frames
    frame["analysis"] = ANALYSIS
    frame["model"] = model.name
    return frame


def run_speech_from_config(model: HookedModel, config: SpeechConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: load the utterances, then :func:`run_speech`."""
    return run_speech(model, load_utterances(config.utterances, config.limit), config, progress)


SPEC = AnalysisSpec(
    name=ANALYSIS,
    description="speech-to-text (Whisper): cross-attention per head / layer / all layers vs gradient and "
                "occlusion saliency of the log-mel input, pooled to the encoder frames; word error rate",
    citation="Papi et al. 2025, Cross-Attention is Half Explanation in Speech-to-Text Models (arXiv 2509.18010)",
    config_model=SpeechConfig,
    run=run_speech_from_config,
    headline_metrics=("xattn_saliency_pearson",),
    check=check_config,
    figures="mechbench.analyses.speech.figures",
)
