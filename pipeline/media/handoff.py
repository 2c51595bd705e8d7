"""The gpu -> encode hand-off: how rendered frames travel through the work dir.

Two formats (``SONIC_HANDOFF``):

- ``h264`` (the gpu stage's default): lossless H.264 in yuv420p (libx264 ``-qp 0 -preset
  ultrafast``) in Matroska, ``render/frames.mkv``. The delivered video is yuv420p, so the
  RGB -> yuv420p conversion the encode stage would make is made here instead, by the same
  ffmpeg conversion, and the encode stage reads back exactly those pixels: the final MP4
  is byte for byte the one encoded from raw frames (``tests/pipeline/media/test_handoff.py``).
  About 12x fewer bytes than raw at 512x512 (~1.6 MB instead of 19.7 MB per video second).
  Frames reach ffmpeg through a bounded queue and a background thread, so the engine
  renders the next batch while ffmpeg compresses the last one.
- ``raw``: rgb24 frames back to back, ``render/frames.rgb`` (engines that write their own
  frames, e.g. ``remote``, and odd frame sizes, which yuv420p cannot hold).

    writer = FrameWriter(out_dir, fps=25, fmt="h264")
    for batch in batches:          # uint8 (N, H, W, 3) or (H, W, 3), RGB
        writer.write(batch)
    path = writer.finish()         # renamed into place; writer.frames, writer.size

The encode stage reads either with :func:`source_args`.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EncodeError
from pipeline.media.ffmpeg import (DEFAULT, PROTOCOLS, FFmpeg, failure, out_of_space,
                                   popen_ffmpeg, wait, WAIT_SLICE_S)

#: Hand-off formats and the file each writes in the render dir.
FILES: dict[str, str] = {"h264": "frames.mkv", "raw": "frames.rgb"}
#: Batches waiting for ffmpeg at most (the engine blocks beyond it: memory stays bounded).
QUEUE_BATCHES = 4
#: ffmpeg's message when the work dir's disk is full.
_NO_SPACE = "No space left on device"


def _encoder_args(width: int, height: int, fps: int, out: Path) -> list[str | Path]:
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
            "-i", "pipe:0", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
            "-pix_fmt", "yuv420p", "-f", "matroska", "-y", out]


class FrameWriter:
    """Write a render's frames in the hand-off format ``fmt`` under ``out_dir``.

    ``write`` takes uint8 RGB batches shaped (N, H, W, 3) or (H, W, 3), all the same size;
    ``finish`` returns the final path (written under a temporary name, then renamed);
    ``abort`` removes what was written. ffmpeg failing raises :class:`EncodeError`
    (``encode.failed``), or ``OSError(ENOSPC)`` when the disk was full (retried as
    ``resource.disk_full``), from ``write`` or ``finish``.
    """

    def __init__(self, out_dir: Path, *, fps: int, fmt: str = "h264", ff: FFmpeg = DEFAULT,
                 queue_batches: int = QUEUE_BATCHES) -> None:
        if fmt not in FILES:
            raise ValueError(f"unknown hand-off format {fmt!r}; known: {', '.join(FILES)}")
        self.out_dir, self.fps, self.fmt, self.ff = Path(out_dir), fps, fmt, ff
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_batches)
        self._file: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / FILES[self.fmt]

    @property
    def _partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        if self.fmt == "h264" and (width % 2 or height % 2):
            self.fmt = "raw"  # yuv420p needs even sides
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.fmt == "raw":
            self._file = open(self._partial, "wb")
            return
        self._stderr = tempfile.TemporaryFile()
        self._proc = popen_ffmpeg(_encoder_args(width, height, self.fps, self._partial),
                                  ff=self.ff, stderr=self._stderr)
        self._thread = threading.Thread(target=self._pump, name="handoff", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        """Background: queued batches into ffmpeg's stdin, until the end marker."""
        assert self._proc is not None and self._proc.stdin is not None
        while True:
            batch = self._queue.get()
            if batch is None:
                break
            if self._error is None:
                try:
                    self._proc.stdin.write(batch.data)
                except BaseException as exc:  # BrokenPipe: ffmpeg died; finish says why
                    self._error = exc
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass

    def write(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        batch = batch[None] if batch.ndim == 3 else batch
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise EncodeError(f"frames must be (N, H, W, 3) RGB, not {batch.shape}")
        if self.size is None:
            self._open(int(batch.shape[2]), int(batch.shape[1]))
        elif (batch.shape[2], batch.shape[1]) != self.size:
            raise EncodeError(f"frame size {batch.shape[2]}x{batch.shape[1]} changed from "
                              f"{self.size[0]}x{self.size[1]}")
        if self._file is not None:
            self._file.write(batch.data)
        else:
            if self._error is not None:
                self._fail()
            self._queue.put(batch)
        self.frames += len(batch)

    def finish(self) -> Path:
        """Close the hand-off and rename it into place; its final path."""
        if self.size is None:
            raise EncodeError("no frames were written")
        if self._file is not None:
            self._file.close()
        else:
            assert self._proc is not None and self._thread is not None
            self._queue.put(None)
            while self._thread.is_alive():  # in slices: a watchdog stop gets through
                self._thread.join(WAIT_SLICE_S)
            code = wait(self._proc)
            self._stderr.seek(0)
            if code != 0 or out_of_space(self._stderr.read()):
                self._fail()
        os.replace(self._partial, self.path)
        return self.path

    def _fail(self) -> None:
        assert self._proc is not None
        self._queue.put(None)  # lets the pump end (it discards after an error)
        code = self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()
        self.abort()
        if _NO_SPACE.encode() in tail:
            raise OSError(errno.ENOSPC, _NO_SPACE, str(self._partial))
        raise failure(EncodeError, "encode.failed", "frame hand-off (ffmpeg)", code, tail)

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (idempotent)."""
        if self._file is not None:
            self._file.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            while self._thread is not None and self._thread.is_alive():
                try:  # unblock a pump waiting for a batch
                    self._queue.put_nowait(None)
                except queue.Full:
                    pass
                self._thread.join(timeout=0.1)
            self._proc.wait()
        self._partial.unlink(missing_ok=True)


def count_frames(path: Path, *, ff: FFmpeg = DEFAULT) -> int:
    """Frames in a hand-off file (``frames.mkv``: its packets, counted by ffprobe)."""
    argv = [ff.ffprobe_bin, "-v", "error", "-protocol_whitelist", PROTOCOLS, "-f", "matroska",
            "-select_streams", "v:0", "-count_packets", "-show_entries",
            "stream=nb_read_packets", "-of", "json", str(path)]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise failure(EncodeError, "encode.failed", f"ffprobe of {Path(path).name}",
                      proc.returncode, proc.stderr)
    streams = json.loads(proc.stdout or b"{}").get("streams") or [{}]
    return int(streams[0].get("nb_read_packets") or 0)


def source_args(path: str | Path, size: tuple[int, int], fps: int, *,
                ff: FFmpeg = DEFAULT) -> tuple[list[str | Path], int]:
    """ffmpeg input options reading the hand-off ``path`` at ``fps`` (``-i`` included) and
    its frame count: Matroska (``.mkv``) or raw rgb24 of ``size`` (width, height)."""
    width, height = size
    if Path(path).suffix == ".mkv":
        # Its own timestamps (whole milliseconds: within half a frame of the rate at any
        # fps up to 60). An input -r here would stop tpad from padding (ffmpeg 5.1).
        return ["-f", "matroska", "-i", path], count_frames(Path(path), ff=ff)
    count = os.path.getsize(path) // (width * height * 3)
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
            "-i", path], count
