"""Speech input: decode anything ffmpeg reads to 16 kHz mono s16 WAV and check it."""

from __future__ import annotations

import math
import os
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import AudioError
from pipeline.media.ffmpeg import DEFAULT, FFmpeg, duration_s, probe, run_ffmpeg

#: The rate every engine consumes (Sonic's whisper features and frame rule assume it).
SAMPLE_RATE = 16_000
#: Loudness (dBFS) the 95th percentile of 50 ms windows must reach to count as speech.
SILENCE_DBFS = -50.0
#: Shorter than this gives fewer than two Sonic key frames (2 x 1280 samples).
MIN_DURATION_S = 2 * 1280 / SAMPLE_RATE
_WINDOW = SAMPLE_RATE // 20


@dataclass(frozen=True)
class AudioInfo:
    """The prepared WAV and what was measured on its decoded samples."""

    path: Path
    sample_rate: int
    samples: int
    duration_s: float
    level_dbfs: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def load_wav(path: str | Path) -> np.ndarray:
    """The samples of a 16 kHz mono s16 WAV as float32 in [-1, 1]."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                raise AudioError(f"{Path(path).name} is not 16 kHz mono s16 WAV",
                                 code="audio.undecodable")
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"{Path(path).name} is not a readable WAV: {exc}",
                         code="audio.undecodable") from None
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def speech_level_dbfs(samples: np.ndarray) -> float:
    """95th percentile of the RMS of 50 ms windows, in dBFS (-inf for digital silence)."""
    count = len(samples) // _WINDOW
    if count == 0:
        windows = samples[None, :].astype(np.float64)
    else:
        windows = samples[: count * _WINDOW].reshape(count, _WINDOW).astype(np.float64)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    level = float(np.percentile(rms, 95)) if rms.size else 0.0
    return 20.0 * math.log10(level) if level > 0 else -math.inf


def prepare_audio(
    src: str | Path, dst_wav: str | Path, max_s: float, *, ff: FFmpeg = DEFAULT
) -> AudioInfo:
    """Decode ``src`` to ``dst_wav`` (16 kHz mono s16) and reject what no engine can use.

    Raises :class:`AudioError` with code ``audio.undecodable``, ``audio.too_long`` or
    ``audio.silent``. The duration is measured from the decoded samples, not the header.
    Decoding stops just past ``max_s`` so a very long file costs little to reject.
    """
    src, dst = Path(src), Path(dst_wav)
    if not src.is_file():
        raise AudioError(f"audio file {src} does not exist", code="audio.undecodable")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial.wav")
    args: list[str | Path] = ["-y", "-i", src, "-map", "0:a:0", "-vn", "-t", f"{max_s + 1:.3f}",
                              "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
                              "-f", "wav", partial]
    try:
        run_ffmpeg(args, ff=ff, error=AudioError, code="audio.undecodable")
        samples = load_wav(partial)
    except AudioError as exc:
        partial.unlink(missing_ok=True)
        raise AudioError(f"cannot decode audio {src.name}: {exc.message}",
                         code="audio.undecodable", **exc.detail) from None
    seconds = len(samples) / SAMPLE_RATE
    try:
        if len(samples) == 0:
            raise AudioError(f"{src.name} holds no audio samples", code="audio.undecodable")
        if seconds > max_s:
            known = duration_s(probe(src, ff=ff, error=AudioError, code="audio.undecodable"))
            length = f"{known:.1f} s" if known else f"more than {max_s:g} s"
            raise AudioError(f"audio is {length} long; the limit is {max_s:g} s",
                             code="audio.too_long", limit_s=max_s)
        level = speech_level_dbfs(samples)
        if seconds < MIN_DURATION_S or level < SILENCE_DBFS:
            why = (f"only {seconds:.2f} s long" if seconds < MIN_DURATION_S
                   else f"at {level:.0f} dBFS, below the {SILENCE_DBFS:g} dBFS speech level")
            raise AudioError(f"audio holds no speech: it is {why}", code="audio.silent")
    except AudioError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dst)
    return AudioInfo(dst, SAMPLE_RATE, len(samples), seconds, level)
