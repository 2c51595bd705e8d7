"""ffmpeg writing onto a full disk: every media step says ``resource.disk_full`` (retried),
never the code of a broken input or a failed encode, and leaves no partial file. The disk
is a real one: a tmpfs of 1 MiB mounted for the test (root) and filled up."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import AudioError, DiskFull, EncodeError, PipelineError
from pipeline.faults import classify
from pipeline.media.audio import prepare_audio
from pipeline.media.encode import encode_video, remux_faststart
from pipeline.media.ffmpeg import run_ffmpeg
from pipeline.media.handoff import FrameWriter
from pipeline.media.image import prepare_image
from tests.pipeline.media.helpers import PORTRAIT


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with every byte taken by a filler file; unmounted afterwards."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                   check=True, capture_output=True)
    try:
        with open(mount / ".filler", "wb", buffering=0) as out:
            for size in (65536, 512, 1):
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, capture_output=True)


def _video(folder: Path) -> Path:
    """A second of 64x64 test picture as MP4."""
    out = folder / "clip.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", out])
    return out


def _frames(count: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(1)
    for _ in range(count):
        yield rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)


def _assert_disk_full(error: PipelineError, full: Path) -> None:
    assert isinstance(error, DiskFull), repr(error)
    assert error.code == "resource.disk_full" and error.retryable
    assert classify(error).code == "resource.disk_full"
    assert "no space left" in error.message.lower()
    assert sorted(p.name for p in full.iterdir()) == [".filler"]  # no partial file


def test_audio_decoded_onto_a_full_disk_is_disk_full(speech_16k: Path, full_disk: Path
                                                     ) -> None:
    with pytest.raises(PipelineError) as caught:
        prepare_audio(speech_16k, full_disk / "audio.wav", 30.0)
    _assert_disk_full(caught.value, full_disk)


def test_audio_kept_beside_the_decode_on_a_full_disk_is_disk_full(
        speech_16k: Path, full_disk: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        prepare_audio(speech_16k, full_disk / "audio.wav", 30.0, keep=full_disk / "orig")
    _assert_disk_full(caught.value, full_disk)


def test_video_encoded_onto_a_full_disk_is_disk_full(speech_16k: Path, full_disk: Path
                                                     ) -> None:
    with pytest.raises(PipelineError) as caught:
        encode_video(_frames(25), speech_16k, full_disk / "out.mp4", size=(64, 64))
    _assert_disk_full(caught.value, full_disk)


def test_remux_onto_a_full_disk_is_disk_full(tmp_path: Path, full_disk: Path) -> None:
    clip = _video(tmp_path)
    with pytest.raises(PipelineError) as caught:
        remux_faststart(clip, full_disk / "out.mp4")
    _assert_disk_full(caught.value, full_disk)


def test_any_ffmpeg_run_onto_a_full_disk_is_disk_full_whatever_code_it_names(
        tmp_path: Path, full_disk: Path) -> None:
    clip = _video(tmp_path)
    for error, code in ((AudioError, "audio.undecodable"), (EncodeError, "encode.failed")):
        with pytest.raises(PipelineError) as caught:
            run_ffmpeg(["-i", clip, "-c", "copy", "-f", "matroska", "-y",
                        full_disk / "copy.mkv"], error=error, code=code)
        (full_disk / "copy.mkv").unlink(missing_ok=True)  # ffmpeg's own output: not ours
        _assert_disk_full(caught.value, full_disk)


def test_the_same_steps_with_room_keep_their_own_codes(tmp_path: Path) -> None:
    """Not every failure is the disk: a broken input keeps its code on a disk with room."""
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + b"\x01" * 64)
    with pytest.raises(AudioError) as caught:
        prepare_audio(broken, tmp_path / "audio.wav", 30.0)
    assert caught.value.code == "audio.undecodable"
    with pytest.raises(EncodeError) as failed:
        remux_faststart(broken, tmp_path / "out.mp4")
    assert failed.value.code == "encode.failed"


@pytest.mark.parametrize("fmt", ["h264", "raw"])
def test_frames_handed_off_onto_a_full_disk_are_disk_full(fmt: str, full_disk: Path) -> None:
    writer = FrameWriter(full_disk, fps=25, fmt=fmt)
    with pytest.raises(OSError) as caught:
        for batch in _frames(25):
            writer.write(batch)
        writer.finish()
    writer.abort()
    assert caught.value.errno == errno.ENOSPC
    _assert_disk_full(classify(caught.value), full_disk)


def test_the_face_crop_written_onto_a_full_disk_is_disk_full(full_disk: Path) -> None:
    with pytest.raises(OSError) as caught:
        prepare_image(PORTRAIT, full_disk / "face.png", min_resolution=256)
    assert caught.value.errno == errno.ENOSPC
    _assert_disk_full(classify(caught.value), full_disk)


def test_the_face_crop_with_room_is_written_whole(tmp_path: Path) -> None:
    crop = prepare_image(PORTRAIT, tmp_path / "face.png", min_resolution=256)
    assert crop.path == tmp_path / "face.png"
    assert Image.open(crop.path).size == (crop.image.shape[1], crop.image.shape[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]
