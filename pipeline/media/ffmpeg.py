"""Run ffmpeg and ffprobe as argument lists; a non-zero exit raises with the stderr tail."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError, EncodeError, PipelineError

#: Characters of stderr kept in a raised error (the end, where ffmpeg says what failed).
STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class FFmpeg:
    """Which binaries to run; build it once from the settings."""

    ffmpeg_bin: str = "ffmpeg"
    ffprobe_bin: str = "ffprobe"

    @classmethod
    def from_settings(cls, settings: Any) -> FFmpeg:
        return cls(settings.ffmpeg_bin, settings.ffprobe_bin)


DEFAULT = FFmpeg()


def stderr_tail(data: bytes | str, limit: int = STDERR_TAIL_CHARS) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text.strip()[-limit:]


def failure(
    error: type[PipelineError], code: str, what: str, returncode: int, stderr: bytes | str
) -> PipelineError:
    """The error for a failed run: code, a message with the exit code and last line."""
    tail = stderr_tail(stderr)
    last = tail.splitlines()[-1] if tail else "no output"
    return error(
        f"{what} failed (exit code {returncode}): {last}",
        code=code,
        exit_code=returncode,
        stderr_tail=tail,
    )


def _argv(ff: FFmpeg, args: Sequence[str | Path], *, reads_stdin: bool = False) -> list[str]:
    head = [ff.ffmpeg_bin, "-hide_banner", "-loglevel", "error"]
    return head + ([] if reads_stdin else ["-nostdin"]) + [str(a) for a in args]


def _binary_missing(binary: str) -> ConfigError:
    return ConfigError(f"{binary!r} not found: install ffmpeg or set SONIC_FFMPEG_BIN/FFPROBE_BIN")


def run_ffmpeg(
    args: Sequence[str | Path],
    *,
    ff: FFmpeg = DEFAULT,
    error: type[PipelineError] = EncodeError,
    code: str = "encode.failed",
    timeout: float | None = None,
) -> bytes:
    """Run ``ffmpeg -nostdin -hide_banner -loglevel error <args>``; return its stdout."""
    argv = _argv(ff, args)
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise _binary_missing(ff.ffmpeg_bin) from None
    except subprocess.TimeoutExpired as exc:
        raise error(f"ffmpeg ran longer than {timeout} s", code=code,
                    exit_code=None, stderr_tail=stderr_tail(exc.stderr or b"")) from None
    if proc.returncode != 0:
        raise failure(error, code, "ffmpeg", proc.returncode, proc.stderr)
    return proc.stdout


def popen_ffmpeg(
    args: Sequence[str | Path], *, ff: FFmpeg, stderr: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start ffmpeg reading from a stdin pipe; stderr goes to a file (no pipe deadlock)."""
    argv = _argv(ff, args, reads_stdin=True)
    try:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    except FileNotFoundError:
        raise _binary_missing(ff.ffmpeg_bin) from None


def probe(
    path: str | Path,
    *,
    ff: FFmpeg = DEFAULT,
    error: type[PipelineError] = EncodeError,
    code: str = "encode.failed",
    timeout: float = 60.0,
) -> dict[str, Any]:
    """``ffprobe``'s format and streams of ``path`` as a dict (raises ``error`` if unreadable)."""
    argv = [ff.ffprobe_bin, "-v", "error", "-print_format", "json",
            "-show_format", "-show_streams", str(path)]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise _binary_missing(ff.ffprobe_bin) from None
    except subprocess.TimeoutExpired:
        raise error(f"ffprobe ran longer than {timeout} s on {path}", code=code) from None
    if proc.returncode != 0:
        raise failure(error, code, f"ffprobe of {Path(path).name}", proc.returncode, proc.stderr)
    info: dict[str, Any] = json.loads(proc.stdout or b"{}")
    info.setdefault("streams", [])
    info.setdefault("format", {})
    return info


def stream(info: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The first stream of ``kind`` ("video"/"audio") in a :func:`probe` result."""
    for item in info.get("streams", []):
        if item.get("codec_type") == kind:
            return dict(item)
    return None


def duration_s(info: dict[str, Any]) -> float | None:
    """The container duration in seconds of a :func:`probe` result, when known."""
    value = info.get("format", {}).get("duration")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
