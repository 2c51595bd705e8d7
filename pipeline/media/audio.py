"""Speech input: decode an upload once into the 16 kHz mono WAV the engines analyse and
the copy of the user's own audio the video carries; reject what holds no speech.

The silence rule (``audio.silent``): the 16 kHz copy is cut into 20 ms windows and each
window's RMS is measured after removing its mean (a DC offset is not sound). The clip
holds speech when windows louder than :data:`SPEECH_DBFS` (-50 dBFS) add up to at least
:data:`MIN_SPEECH_S` (0.1 s) anywhere in it, so a short line after a long quiet lead-in
counts, while digital silence, faint room noise or hum below -50 dBFS, and a lone click,
do not. The level is not a voice detector: a loud noise counts as sound.
"""

from __future__ import annotations

import math
import os
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import AudioError
from pipeline.media.ffmpeg import (AUDIO_DEMUXERS, DEFAULT, FFmpeg, duration_s, input_args,
                                   probe, run_ffmpeg, stream)
from pipeline.media.frames import SAMPLE_RATE, SAMPLES_PER_KEY_FRAME

#: A 20 ms window louder than this (RMS, dBFS) holds speech-level sound.
SPEECH_DBFS = -50.0
#: Speech-level windows must add up to this much (seconds) for the clip not to be silent.
MIN_SPEECH_S = 0.1
#: Shorter than this gives fewer than two Sonic key frames (2 x 1280 samples).
MIN_DURATION_S = 2 * SAMPLES_PER_KEY_FRAME / SAMPLE_RATE
WINDOW = SAMPLE_RATE // 50
#: Rates the video's AAC track is written at (the user's own rate when it is one of them).
AAC_RATES = (16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


@dataclass(frozen=True)
class AudioInfo:
    """The prepared WAV, what was measured on it, and the user's audio kept for the video."""

    path: Path
    sample_rate: int
    samples: int
    duration_s: float
    #: RMS of the loudest 20 ms window, dBFS.
    level_dbfs: float
    #: Seconds of 20 ms windows above :data:`SPEECH_DBFS`.
    speech_s: float = 0.0
    #: The kept copy: {"path", "sample_rate", "channels", "source_rate", "source_channels",
    #: "codec"}; None when no copy was asked for.
    original: dict[str, Any] | None = None

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


def window_levels_dbfs(samples: np.ndarray) -> np.ndarray:
    """The RMS of each 20 ms window of 16 kHz ``samples``, mean removed, in dBFS.

    A trailing part shorter than a window is one more window; digital silence is -inf.
    """
    data = samples.astype(np.float64)
    full = len(data) // WINDOW
    rms = data[: full * WINDOW].reshape(full, WINDOW).std(axis=1)
    if len(data) > full * WINDOW:
        rms = np.append(rms, data[full * WINDOW:].std())
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms)


def speech_level_dbfs(samples: np.ndarray) -> float:
    """RMS of the loudest 20 ms window, in dBFS (-inf for digital silence)."""
    levels = window_levels_dbfs(samples)
    return float(levels.max()) if levels.size else -math.inf


def speech_seconds(samples: np.ndarray, threshold_dbfs: float = SPEECH_DBFS) -> float:
    """Seconds of 20 ms windows louder than ``threshold_dbfs``, anywhere in the clip."""
    return int(np.count_nonzero(window_levels_dbfs(samples) > threshold_dbfs)) * WINDOW \
        / SAMPLE_RATE


def delivery_format(rate: int, channels: int) -> tuple[int, int]:
    """The (rate, channels) of the video's AAC track for a source of ``rate``/``channels``.

    Mono stays mono; two or more channels become stereo (5.1 is downmixed). A rate in
    :data:`AAC_RATES` is kept; a higher one becomes 48 kHz (44.1 kHz for its multiples);
    a lower or odd one rises to the next rate in the list (8 kHz becomes 16 kHz).
    """
    out_channels = 1 if channels <= 1 else 2
    if rate in AAC_RATES:
        return rate, out_channels
    if rate > AAC_RATES[-1]:
        return (44_100 if rate % 44_100 == 0 else 48_000), out_channels
    return next(r for r in AAC_RATES if r >= rate), out_channels


def _source(src: Path, ff: FFmpeg) -> dict[str, Any]:
    """The first audio stream of an upload; only single-file containers are opened."""
    try:
        info = probe(src, ff=ff, error=AudioError, code="audio.undecodable",
                     formats=AUDIO_DEMUXERS)
    except AudioError as exc:
        raise AudioError(f"cannot decode audio {src.name}: {exc.message}",
                         code="audio.undecodable", **exc.detail) from None
    audio = stream(info, "audio")
    if audio is None:
        raise AudioError(f"{src.name} holds no audio stream", code="audio.undecodable")
    return {"format": info, "stream": audio}


def prepare_audio(
    src: str | Path, dst_wav: str | Path, max_s: float, *, keep: str | Path | None = None,
    ff: FFmpeg = DEFAULT,
) -> AudioInfo:
    """Decode ``src`` to ``dst_wav`` (16 kHz mono s16) and reject what no engine can use.

    With ``keep``, the same decode also writes the user's audio there as FLAC at the
    rate and channels of :func:`delivery_format` (what the video carries), sample for
    sample aligned with ``dst_wav``. Only the demuxers in ``AUDIO_DEMUXERS`` may read
    ``src``: a playlist or concat list raises ``InputError`` ``input.unsupported_format``.
    Raises :class:`AudioError` ``audio.undecodable``, ``audio.too_long`` or
    ``audio.silent``. The duration is measured from the decoded samples, not the header;
    decoding stops just past ``max_s`` so a very long file costs little to reject.
    """
    src, dst = Path(src), Path(dst_wav)
    if not src.is_file():
        raise AudioError(f"audio file {src} does not exist", code="audio.undecodable")
    source = _source(src, ff)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial.wav")
    limit = ["-map", "0:a:0", "-vn", "-sn", "-dn", "-t", f"{max_s + 1:.3f}"]
    args: list[str | Path] = ["-y", *input_args(src, AUDIO_DEMUXERS), *limit, "-ac", "1",
                              "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", partial]
    kept: Path | None = None
    original: dict[str, Any] | None = None
    if keep is not None:
        keep = Path(keep)
        kept = keep.with_name(keep.name + ".partial.flac")
        in_rate = int(source["stream"].get("sample_rate") or SAMPLE_RATE)
        in_channels = int(source["stream"].get("channels") or 1)
        rate, channels = delivery_format(in_rate, in_channels)
        args += [*limit, "-ac", str(channels), "-ar", str(rate), "-c:a", "flac", "-f", "flac",
                 kept]
        original = {"path": str(keep), "sample_rate": rate, "channels": channels,
                    "source_rate": in_rate, "source_channels": in_channels,
                    "codec": source["stream"].get("codec_name")}
    partials = [p for p in (partial, kept) if p is not None]
    try:
        try:
            run_ffmpeg(args, ff=ff, error=AudioError, code="audio.undecodable")
            samples = load_wav(partial)
        except AudioError as exc:
            raise AudioError(f"cannot decode audio {src.name}: {exc.message}",
                             code="audio.undecodable", **exc.detail) from None
        info = _check(src, samples, max_s, source["format"])
    except BaseException:
        for path in partials:
            path.unlink(missing_ok=True)
        raise
    if kept is not None and keep is not None:
        os.replace(kept, keep)
    os.replace(partial, dst)
    return AudioInfo(dst, SAMPLE_RATE, len(samples), len(samples) / SAMPLE_RATE,
                     info[0], info[1], original)


def _check(src: Path, samples: np.ndarray, max_s: float,
           probed: dict[str, Any]) -> tuple[float, float]:
    """(loudest window dBFS, speech seconds), or the AudioError that rejects the clip."""
    seconds = len(samples) / SAMPLE_RATE
    if len(samples) == 0:
        raise AudioError(f"{src.name} holds no audio samples", code="audio.undecodable")
    if seconds > max_s:
        known = duration_s(probed)
        length = f"{known:.1f} s" if known else f"more than {max_s:g} s"
        raise AudioError(f"audio is {length} long; the limit is {max_s:g} s",
                         code="audio.too_long", limit_s=max_s)
    if seconds < MIN_DURATION_S:
        raise AudioError(f"audio holds no speech: it is only {seconds:.2f} s long",
                         code="audio.silent")
    level, speech = speech_level_dbfs(samples), speech_seconds(samples)
    if speech < MIN_SPEECH_S:
        loudest = f"{level:.0f} dBFS" if math.isfinite(level) else "digital silence"
        raise AudioError(
            f"audio holds no speech: {speech:.2f} s of it is above {SPEECH_DBFS:g} dBFS "
            f"(20 ms windows; at least {MIN_SPEECH_S:g} s needed); the loudest window is "
            f"{loudest}", code="audio.silent", speech_s=speech)
    return level, speech
