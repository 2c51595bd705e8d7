"""Final video: raw RGB frames + the user's audio -> H.264/AAC MP4 in one encode, and a poster.

The AAC track keeps the audio's own rate and channels within what players expect
(:func:`pipeline.media.audio.delivery_format`: 44.1/48 kHz kept, mono kept, 5.1 to
stereo, at most 48 kHz). The video lasts ``seconds`` (the length the engine rendered
for, from the 16 kHz analysis copy) rounded up to whole frames; the audio starts with
the first frame and ends with the last, padded with silence, never longer.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DiskFull, EncodeError
from pipeline.media import handoff
from pipeline.media.audio import delivery_format
from pipeline.media.ffmpeg import (DEFAULT, FFmpeg, duration_s, failure, out_of_space,
                                   popen_ffmpeg, probe, run_ffmpeg, stream, wait)
from pipeline.media.frames import FPS, SAMPLE_RATE

#: A raw frames file or batches of frames shaped (H, W, 3) or (N, H, W, 3), RGB uint8.
Frames = Path | str | Iterable[np.ndarray]


@dataclass(frozen=True)
class EncodeInfo:
    path: Path
    frames: int
    duration_s: float
    size_bytes: int
    elapsed_s: float


#: AAC bit rate per channel of the video's audio track.
AAC_BITRATE_PER_CHANNEL = 96_000


def audio_args(audio: str | Path, ff: FFmpeg) -> tuple[list[str], float | None]:
    """The AAC encoder options for ``audio`` (rate, channels, bit rate) and its duration."""
    info = probe(audio, ff=ff)
    sound = stream(info, "audio") or {}  # none: ffmpeg's own map error says so
    rate, channels = delivery_format(int(sound.get("sample_rate") or SAMPLE_RATE),
                                     int(sound.get("channels") or 1))
    return (["-c:a", "aac", "-b:a", str(AAC_BITRATE_PER_CHANNEL * channels), "-ar", str(rate),
             "-ac", str(channels)], duration_s(info))


def _cut(seconds: float) -> list[str]:
    """Both streams end at ``seconds``: the audio padded with silence up to it (never cut
    short of the last frame), the video's frames cut there."""
    # -t, never -frames:v: in ffmpeg 5.1, -frames:v with -shortest dropped the audio still
    # buffered when the frame limit was hit (half the speech went missing).
    return ["-af", "apad", "-t", f"{seconds:.6f}"]


def _output_args(fps: int, crf: int, seconds: float, sound: list[str],
                 out: Path) -> list[str | Path]:
    return ["-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", "medium",
            "-crf", str(crf), "-pix_fmt", "yuv420p", "-r", str(fps), *sound, *_cut(seconds),
            "-movflags", "+faststart", "-f", "mp4", "-y", out]


def _write_frames(stdin: object, frames: Iterable[np.ndarray], shape: tuple[int, int],
                  target: int) -> int:
    """Write at most ``target`` frames, then repeat the last one up to ``target``."""
    written, last = 0, None
    for batch in frames:
        batch = np.asarray(batch, dtype=np.uint8)
        batch = batch[None] if batch.ndim == 3 else batch
        if batch.shape[1:] != (shape[1], shape[0], 3):
            raise EncodeError(f"frame shape {batch.shape[1:]} is not {shape[1]}x{shape[0]}x3")
        batch = batch[: target - written]
        if len(batch):
            stdin.write(np.ascontiguousarray(batch).data)  # type: ignore[attr-defined]
            written, last = written + len(batch), batch[-1]
        if written >= target:
            break
    if last is None:
        raise EncodeError("the engine produced no frames")
    pad = np.ascontiguousarray(last).tobytes()
    for _ in range(target - written):
        stdin.write(pad)  # type: ignore[attr-defined]
    return target


def encode_video(
    frames: Frames,
    audio: str | Path,
    out_mp4: str | Path,
    *,
    size: tuple[int, int],
    fps: int = FPS,
    crf: int = 18,
    ff: FFmpeg = DEFAULT,
    seconds: float | None = None,
) -> EncodeInfo:
    """Encode ``frames`` (``size`` = (width, height)) with ``audio`` into ``out_mp4``.

    The frames go through ffmpeg once (a raw file is read by ffmpeg itself, an iterable
    is streamed into its stdin). The video lasts ``seconds`` (default: the audio's
    length) rounded up to whole frames: the frame count is fitted to it, the last frame
    repeated when short, and the audio ends there too. Written to a temporary name and
    renamed, so a re-run overwrites cleanly.
    """
    if not 0 <= crf <= 51 or fps <= 0:
        raise EncodeError(f"crf must be within 0..51 (x264) and fps positive: {crf}, {fps}")
    started = time.monotonic()
    out = Path(out_mp4)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.mp4")
    sound, audio_s = audio_args(audio, ff)
    seconds = seconds or audio_s
    if not seconds:
        raise EncodeError(f"cannot read the duration of {Path(audio).name}")
    target = math.ceil(round(seconds * fps, 6))
    seconds = target / fps  # whole frames: the audio ends with the last one
    width, height = size
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)]
    if isinstance(frames, (str, Path)):
        # A raw rgb24 file or the gpu stage's lossless hand-off (pipeline/media/handoff.py).
        source, count = handoff.source_args(frames, size, fps, ff=ff)
        if count == 0:
            raise EncodeError(f"{Path(frames).name} holds no {width}x{height} frames")
        pad = ["-vf", f"tpad=stop_mode=clone:stop={target - count}"] if count < target else []
        args = [*source, "-i", audio, *pad,
                *_output_args(fps, crf, seconds, sound, partial)]
        try:
            run_ffmpeg(args, ff=ff)
        except BaseException:  # failed, or stopped by the stage's watchdog
            partial.unlink(missing_ok=True)
            raise
    else:
        with tempfile.TemporaryFile() as err:
            args = [*raw, "-i", "pipe:0", "-i", audio,
                    *_output_args(fps, crf, seconds, sound, partial)]
            proc = popen_ffmpeg(args, ff=ff, stderr=err)
            try:
                _write_frames(proc.stdin, frames, size, target)
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass  # ffmpeg exited early: its exit code and stderr say why
            except BaseException:  # the frames' source failed or was cancelled
                proc.kill()
                proc.wait()
                partial.unlink(missing_ok=True)
                raise
            try:
                code = wait(proc)  # the tail of the encode; a watchdog stop kills it
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            err.seek(0)
            said = err.read()
            if code != 0 or out_of_space(said):
                partial.unlink(missing_ok=True)
                raise failure(EncodeError, "encode.failed", "ffmpeg encode", code, said)
    os.replace(partial, out)
    return EncodeInfo(out, target, duration_s(probe(out, ff=ff)) or 0.0, out.stat().st_size,
                      time.monotonic() - started)


def remux_faststart(src: str | Path, out_mp4: str | Path, *, ff: FFmpeg = DEFAULT) -> Path:
    """Copy an MP4 made elsewhere (the Sonic engine) with its index moved to the front."""
    out = Path(out_mp4)
    partial = out.with_name(out.name + ".partial.mp4")
    try:
        run_ffmpeg(["-i", src, "-map", "0", "-c", "copy", "-movflags", "+faststart",
                    "-f", "mp4", "-y", partial], ff=ff)
    except (EncodeError, DiskFull):
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return out


def replace_audio(src: str | Path, audio: str | Path, out_mp4: str | Path, *,
                  ff: FFmpeg = DEFAULT) -> Path:
    """An MP4 made elsewhere (the Sonic engine, muxed with the 16 kHz copy) with its video
    stream copied as it is and ``audio`` as its AAC track, cut to the video's length."""
    out = Path(out_mp4)
    partial = out.with_name(out.name + ".partial.mp4")
    picture = stream(probe(src, ff=ff), "video")
    seconds = float((picture or {}).get("duration") or 0)
    if not seconds:
        raise EncodeError(f"cannot read the video length of {Path(src).name}")
    sound, _ = audio_args(audio, ff)
    try:
        run_ffmpeg(["-i", src, "-i", audio, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                    *sound, *_cut(seconds), "-movflags", "+faststart",
                    "-f", "mp4", "-y", partial], ff=ff)
    except (EncodeError, DiskFull):
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return out


def make_poster(mp4: str | Path, jpg: str | Path, *, at_s: float = 0.0,
                ff: FFmpeg = DEFAULT) -> Path:
    """Write one frame of ``mp4`` (at ``at_s``) as a JPEG poster."""
    out = Path(jpg)
    partial = out.with_name(out.name + ".partial.jpg")
    run_ffmpeg(["-ss", f"{at_s:.3f}", "-i", mp4, "-frames:v", "1", "-q:v", "3",
                "-update", "1", "-f", "image2", "-y", partial], ff=ff)
    os.replace(partial, out)
    return out
