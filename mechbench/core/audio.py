"""Audio input for speech models: read WAV files, resample to 16 kHz, synthesise speech with espeak-ng.

Only Python's ``wave`` module and numpy are used (no soundfile / scipy). Every problem with a file
is a one-line :class:`~mechbench.errors.DatasetError` that names the file, the problem and the fix.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from mechbench.errors import CapabilityError, DatasetError

#: Whisper's sample rate and input window (Radford et al. 2022): 16 kHz, 30 s.
SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0


def resample(audio: np.ndarray, rate_in: int, rate_out: int, zero_crossings: int = 16,
             rolloff: float = 0.95) -> np.ndarray:
    """Band-limited resampling by windowed-sinc interpolation (Smith, "Digital Audio Resampling").

    Output sample ``n`` sits at input time ``t_n = n rate_in / rate_out`` and is
    ``y[n] = sum_k x[k] c sinc(c (t_n - k)) w(t_n - k)``, with cutoff ``c = rolloff min(1, rate_out/rate_in)``
    (an anti-aliasing low-pass when downsampling) and a Hann window ``w`` over ``zero_crossings / c``
    input samples on each side. ``len(y) = round(len(x) rate_out / rate_in)``.
    """
    if rate_in == rate_out:
        return audio.astype(np.float32)
    cutoff = rolloff * min(1.0, rate_out / rate_in)
    half = zero_crossings / cutoff
    n_out = round(len(audio) * rate_out / rate_in)
    taps = np.arange(-int(np.ceil(half)), int(np.ceil(half)) + 1)
    padded = np.concatenate([np.zeros(len(taps)), audio.astype(np.float64), np.zeros(len(taps))])
    out = np.empty(n_out, dtype=np.float64)
    for start in range(0, n_out, 8192):
        times = np.arange(start, min(start + 8192, n_out)) * rate_in / rate_out
        index = np.floor(times).astype(np.int64)[:, None] + taps[None, :]
        distance = times[:, None] - index
        window = np.where(np.abs(distance) < half, 0.5 + 0.5 * np.cos(np.pi * distance / half), 0.0)
        weights = cutoff * np.sinc(cutoff * distance) * window
        out[start:start + len(times)] = (padded[index + len(taps)] * weights).sum(1)
    return out.astype(np.float32)


def _pcm_to_float(frames: bytes, width: int) -> np.ndarray:
    """Interleaved PCM bytes of ``width`` bytes per sample as floats in [-1, 1)."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float64) - 128) / 128
    if width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        return np.where(values >= 1 << 23, values - (1 << 24), values) / float(1 << 23)
    dtype = {2: np.int16, 4: np.int32}[width]
    return np.frombuffer(frames, dtype=dtype).astype(np.float64) / float(2 ** (8 * width - 1))


def read_wav(path: str | Path, resample_to: int | None = SAMPLE_RATE, max_seconds: float = MAX_SECONDS,
             rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples of a PCM WAV file at ``rate`` Hz.

    A file at another rate is resampled (:func:`resample`) when ``resample_to`` is set, else refused.
    Stereo, empty, non-WAV, compressed and too-long files (over ``max_seconds``) raise DatasetError.
    """
    path = Path(path)
    convert = f"e.g. `ffmpeg -i {path} -ar {rate} -ac 1 -c:a pcm_s16le out.wav`"
    if not path.is_file():
        raise DatasetError(f"audio file {path} not found; give the path of an existing mono {rate} Hz .wav file")
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width, file_rate = handle.getnchannels(), handle.getsampwidth(), handle.getframerate()
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DatasetError(f"audio file {path} is not a PCM WAV file ({exc}); convert it to a mono {rate} Hz "
                           f"16-bit WAV, {convert}") from None
    if channels != 1:
        raise DatasetError(f"audio file {path} has {channels} channels, speech models take mono audio; mix it down "
                           f"to one channel, {convert}")
    samples = _pcm_to_float(frames, width)
    if samples.size == 0:
        raise DatasetError(f"audio file {path} holds no samples; give a recording with speech in it")
    if file_rate != rate:
        if resample_to is None:
            raise DatasetError(f"audio file {path} is sampled at {file_rate} Hz, the model needs {rate} Hz; "
                               f"resample it ({convert}) or turn resampling on (speech.resample: true)")
        samples = resample(samples, file_rate, rate)
    seconds = samples.size / rate
    if seconds > max_seconds:
        raise DatasetError(f"audio file {path} lasts {seconds:.1f} s, longer than the model's {max_seconds:.0f} s "
                           f"window; cut it into pieces of at most {max_seconds:.0f} s")
    return samples.astype(np.float32)


def synthesize(text: str, out: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """Speak ``text`` with espeak-ng into the WAV file ``out`` (22050 Hz mono 16-bit, espeak's own rate).

    The text goes through stdin, so a text starting with ``-`` is never read as an option.
    """
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise CapabilityError("espeak-ng is not installed, and synthesising the test utterances needs it; install it "
                              "(`apt-get install espeak-ng`, done by `make setup`) or give utterances with wav files")
    done = subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), "-w", str(out), "--stdin"],
                          input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        reason = " ".join((done.stderr or "no output").split())[:160]
        raise DatasetError(f"espeak-ng could not speak {text[:40]!r} with voice {voice!r} ({reason}); "
                           "check the voice name (`espeak-ng --voices`)")
    return out
