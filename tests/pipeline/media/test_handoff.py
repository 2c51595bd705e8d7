"""The gpu -> encode hand-off (pipeline/media/handoff.py): lossless H.264 in Matroska whose
final video is byte for byte the one encoded from raw frames, at a fraction of the bytes;
and every way the hand-off's ffmpeg can fail leaves no partial file and a clear error."""

from __future__ import annotations

import errno
import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import EncodeError
from pipeline.media.encode import encode_video
from pipeline.media.ffmpeg import FFmpeg
from pipeline.media.handoff import FILES, FrameWriter, count_frames, source_args


def _frames(count: int, width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    """A moving gradient with texture and noise: no codec can keep it exactly by luck."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        base = (x * 2 + y + i * 5) % 256
        out[i, ..., 0] = base
        out[i, ..., 1] = (base * 3 + 40) % 256
        out[i, ..., 2] = rng.integers(0, 256, (height, width))
    return out


def _write(out_dir: Path, frames: np.ndarray, fmt: str, ff: FFmpeg | None = None) -> Path:
    writer = FrameWriter(out_dir, fps=25, fmt=fmt, **({"ff": ff} if ff else {}))
    for start in range(0, len(frames), 4):
        writer.write(frames[start:start + 4])
    return writer.finish()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("count,seed", [(37, 1), (50, 2)])  # short of the audio; longer
def test_the_h264_handoff_gives_the_same_final_video_as_raw_frames(
        speech_16k: Path, tmp_path: Path, count: int, seed: int) -> None:
    frames = _frames(count, seed=seed)
    raw = _write(tmp_path / "raw", frames, "raw")
    h264 = _write(tmp_path / "h264", frames, "h264")
    assert (raw.name, h264.name) == (FILES["raw"], FILES["h264"])
    assert count_frames(h264) == count and source_args(h264, (128, 96), 25)[1] == count

    a = encode_video(raw, speech_16k, tmp_path / "a.mp4", size=(128, 96))
    b = encode_video(h264, speech_16k, tmp_path / "b.mp4", size=(128, 96))
    assert a.frames == b.frames
    assert _md5(a.path) == _md5(b.path)
    assert not list(tmp_path.rglob("*.partial"))


def test_smooth_frames_take_a_fraction_of_the_raw_bytes(tmp_path: Path) -> None:
    y, x = np.mgrid[0:256, 0:256]
    frames = np.stack([np.stack([(x + i) % 256, (y + 2 * i) % 256, (x + y) // 2 % 256], -1)
                       for i in range(25)]).astype(np.uint8)
    raw = _write(tmp_path / "raw", frames, "raw")
    h264 = _write(tmp_path / "h264", frames, "h264")
    assert raw.stat().st_size == frames.nbytes
    assert h264.stat().st_size * 10 < raw.stat().st_size


@pytest.mark.parametrize("size", [(65, 64), (64, 33), (127, 9)])
def test_odd_sides_fall_back_to_raw(tmp_path: Path, size: tuple[int, int]) -> None:
    frames = _frames(3, *size)
    path = _write(tmp_path, frames, "h264")
    assert path.name == FILES["raw"] and path.stat().st_size == frames.nbytes


def _fake_ffmpeg(tmp_path: Path, body: str) -> FFmpeg:
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return FFmpeg(ffmpeg_bin=str(script))


@pytest.mark.parametrize("body", [
    "exit 1",                                         # refuses at once
    "head -c 1000 >/dev/null; echo 'encoder broke' >&2; exit 3",  # dies mid-stream
    "cat >/dev/null; exit 2",                         # reads it all, then fails
])
def test_an_ffmpeg_failure_is_encode_failed_and_leaves_no_file(tmp_path: Path,
                                                               body: str) -> None:
    with pytest.raises(EncodeError) as err:
        _write(tmp_path / "out", _frames(40), "h264", _fake_ffmpeg(tmp_path, body))
    assert err.value.code == "encode.failed"
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("body", [
    "echo 'Error writing trailer: No space left on device' >&2; exit 1",
    "cat >/dev/null; echo 'av_interleaved_write_frame(): No space left on device' >&2; exit 1",
])
def test_a_full_disk_is_enospc_so_the_stage_is_retried(tmp_path: Path, body: str) -> None:
    with pytest.raises(OSError) as err:
        _write(tmp_path / "out", _frames(40), "h264", _fake_ffmpeg(tmp_path, body))
    assert err.value.errno == errno.ENOSPC
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("bad", [
    np.zeros((2, 96, 64, 3), np.uint8),   # another size mid-way
    np.zeros((2, 96, 128), np.uint8),     # not RGB
    np.zeros((96, 128, 4), np.uint8),     # RGBA
])
def test_a_bad_batch_is_refused_and_abort_cleans_up(tmp_path: Path, bad: np.ndarray) -> None:
    writer = FrameWriter(tmp_path, fps=25, fmt="h264")
    writer.write(_frames(4))
    with pytest.raises(EncodeError):
        writer.write(bad)
    writer.abort()
    assert not list(tmp_path.iterdir())
    assert writer._proc is not None and writer._proc.poll() is not None
