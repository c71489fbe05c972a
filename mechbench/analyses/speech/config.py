"""Options of the speech analysis and the checks that need no model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from mechbench.analyses.speech.metrics import Pooling, SaliencyMethod
from mechbench.config import StrictModel
from mechbench.core.audio import SAMPLE_RATE, read_wav, synthesize
from mechbench.tasks.speech import BUILTIN, load_utterances


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
