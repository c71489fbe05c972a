"""Model-running code of the speech analysis: audio, transcription, saliency and the rows of a run."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechbench.analyses.speech.config import SpeechConfig
from mechbench.analyses.speech.metrics import (
    gradient_saliency,
    occlusion_replacement,
    occlusion_saliency,
    pool_saliency,
)
from mechbench.analyses.speech.rows import ANALYSIS, COLUMNS, _map_rows, correlation_rows, wer_rows
from mechbench.core.audio import SAMPLE_RATE, read_wav, synthesize
from mechbench.core.model import ModelInterface
from mechbench.core.speech import SpeechModel
from mechbench.core.tidy import finish_rows
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.speech import Utterance, load_utterances


def utterance_audio(utterance: Utterance, config: SpeechConfig, directory: Path) -> np.ndarray:
    """16 kHz mono samples of an utterance: its WAV file, or espeak-ng's speech of its text (resampled)."""
    if utterance.wav is not None:
        return read_wav(utterance.wav, SAMPLE_RATE if config.resample else None)
    wav = synthesize(utterance.text, directory / f"{len(list(directory.iterdir()))}.wav", config.voice,
                     config.words_per_minute)
    return read_wav(wav, SAMPLE_RATE)


def analyze_utterance(model: SpeechModel, utterance: Utterance, audio: np.ndarray, config: SpeechConfig,
                      with_maps: bool) -> pd.DataFrame:
    """WER, and cross-attention vs saliency correlations of one utterance, as tidy rows."""
    features = model.log_mel(audio)
    generated = model.transcribe(features, config.max_new_tokens)
    transcript = model.decode(generated)
    wer = wer_rows(utterance.text, transcript)
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
    frames = [wer, *correlation_rows(attention, saliency, tokens)]
    if with_maps:
        frames.append(_map_rows(model, features, attention, saliency, n_frames, tokens))
    frame = pd.concat(frames, ignore_index=True)
    frame["n_frames"] = n_frames
    frame["n_tokens"] = len(generated)
    frame["transcript"] = transcript
    return frame


def run_speech(model: ModelInterface, utterances: Sequence[Utterance], config: SpeechConfig | None = None,
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
    frame = pd.concat(frames, ignore_index=True)
    frame["pooling"] = config.pooling
    frame["frames"] = config.frames
    return finish_rows(frame, ANALYSIS, model.name, COLUMNS)


def run_speech_from_config(model: ModelInterface, config: SpeechConfig, progress: bool = True) -> pd.DataFrame:
    """Runner used by the CLI: load the utterances, then :func:`run_speech`."""
    return run_speech(model, load_utterances(config.utterances, config.limit), config, progress)
