"""Run ffmpeg and ffprobe as argument lists; a non-zero exit raises with the stderr tail.

Every input ffmpeg or ffprobe opens is limited to the ``file`` and ``pipe`` protocols
(:data:`PROTOCOLS`), so nothing we run can reach the network. Untrusted media is also
limited to single-file containers (:data:`AUDIO_DEMUXERS`): playlists and lists of other
files (HLS, concat/ffconcat, image sequences) would make ffmpeg open the files they name,
so they are refused with ``input.unsupported_format`` before anything else is read.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError, DiskFull, EncodeError, InputError, PipelineError

#: Characters of stderr kept in a raised error (the end, where ffmpeg says what failed).
STDERR_TAIL_CHARS = 2000
#: The only protocols any input may be opened with: local files and our own pipes.
PROTOCOLS = "file,pipe"
#: Demuxers an uploaded audio file may be read with (ffmpeg's names): single-file audio
#: containers and the video containers people send speech in. Not here on purpose:
#: ``hls``, ``concat``, ``image2`` and every other demuxer that opens further files.
AUDIO_DEMUXERS: tuple[str, ...] = (
    "wav", "w64", "mp3", "aac", "mov", "ogg", "flac", "matroska", "aiff", "caf", "amr",
    "asf", "au", "wv", "ape", "avi", "ac3", "eac3", "mpegts",
)
#: What ffmpeg says when the demuxer or protocol of an input is not allow-listed.
_NOT_ALLOWED = "not on whitelist"
#: What ffmpeg and ffprobe print (strerror of ENOSPC / EDQUOT) when a disk is full.
_DISK_FULL = ("No space left on device", "Disk quota exceeded")


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
    """The error for a failed run: code, a message with the exit code and last line.

    A run that failed because its output's disk is full says so in its stderr: that is
    :class:`DiskFull` (``resource.disk_full``, retried), whatever ``error`` the caller
    names, never a broken input or a failed encode."""
    tail = stderr_tail(stderr)
    last = tail.splitlines()[-1] if tail else "no output"
    if out_of_space(tail):
        return DiskFull(f"{what} failed (exit code {returncode}): no space left on the "
                        f"device: {last}", exit_code=returncode, stderr_tail=tail)
    return error(
        f"{what} failed (exit code {returncode}): {last}",
        code=code,
        exit_code=returncode,
        stderr_tail=tail,
    )


def out_of_space(stderr: bytes | str) -> bool:
    """Whether ffmpeg's stderr says a disk was full. ffmpeg may still exit 0 then (a
    failed trailer write or close is only logged), leaving a truncated or empty output:
    a run that says so has failed, whatever its exit code."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return any(sign in text for sign in _DISK_FULL)


def demuxer_allowed(format_name: str, allowed: Sequence[str]) -> bool:
    """True if one of the names in ffprobe's ``format_name`` ("mov,mp4,m4a,...") is allowed."""
    return any(name in allowed for name in format_name.split(","))


def input_args(path: str | Path, formats: Sequence[str]) -> list[str | Path]:
    """``-i path`` for an untrusted file: only the demuxers in ``formats`` may read it."""
    return ["-format_whitelist", ",".join(formats), "-i", path]


def _guard_inputs(args: Sequence[str | Path]) -> list[str]:
    """``args`` with ``-protocol_whitelist file,pipe`` before every ``-i``."""
    out: list[str] = []
    for arg in args:
        if str(arg) == "-i":
            out += ["-protocol_whitelist", PROTOCOLS]
        out.append(str(arg))
    return out


def _argv(ff: FFmpeg, args: Sequence[str | Path], *, reads_stdin: bool = False) -> list[str]:
    head = [ff.ffmpeg_bin, "-hide_banner", "-loglevel", "error"]
    return head + ([] if reads_stdin else ["-nostdin"]) + _guard_inputs(args)


def _refused(what: str, stderr: bytes | str) -> InputError | None:
    """``input.unsupported_format`` when ffmpeg refused an input's demuxer or protocol."""
    tail = stderr_tail(stderr)
    line = next((ln for ln in tail.splitlines() if _NOT_ALLOWED in ln), None)
    if line is None:
        return None
    protocol = re.search(r"Protocol '([^']*)' not on whitelist", line)
    demuxer = re.match(r"\[(\w+) @", line.strip())
    if protocol:
        why = f"names the {protocol.group(1)} protocol; only local files are read"
    else:
        kind = f"a {demuxer.group(1)} file" if demuxer else "in a format not allowed"
        why = (f"is {kind}; only single-file media containers are read "
               "(playlists and lists of other files are refused)")
    return InputError(f"{what} {why}", code="input.unsupported_format", stderr_tail=tail)


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
    """Run ``ffmpeg -nostdin -hide_banner -loglevel error <args>``; return its stdout.

    The wait returns to Python every :data:`WAIT_SLICE_S`, so an exception raised in this
    thread meanwhile (a stage's watchdog: lease lost, cancelled, budget spent) stops it
    within that: ffmpeg is killed and reaped, and the exception goes on. Raises ``error``
    (``code``) when ffmpeg fails or runs past ``timeout`` seconds, :class:`DiskFull` when
    the disk filled, ``ConfigError`` when the binary is missing."""
    argv = _argv(ff, args)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise _binary_missing(ff.ffmpeg_bin) from None
    try:
        stdout, stderr = communicate(proc, timeout)
    except subprocess.TimeoutExpired as exc:
        raise error(f"ffmpeg ran longer than {timeout} s", code=code,
                    exit_code=None, stderr_tail=stderr_tail(exc.stderr or b"")) from None
    if proc.returncode != 0 or out_of_space(stderr):
        raise _refused("an input", stderr) or failure(error, code, "ffmpeg",
                                                      proc.returncode, stderr)
    return stdout


#: Seconds a wait for ffmpeg blocks at most before it returns to Python (see run_ffmpeg).
WAIT_SLICE_S = 0.2


def communicate(proc: subprocess.Popen[bytes], timeout: float | None = None
                ) -> tuple[bytes, bytes]:
    """``proc.communicate()`` in slices of :data:`WAIT_SLICE_S` (``subprocess`` keeps the
    output read so far across them): (stdout, stderr). Any exception meanwhile, or
    ``timeout`` seconds passing (``subprocess.TimeoutExpired``, with the stderr read),
    kills and reaps the process first."""
    end = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait = WAIT_SLICE_S if end is None else min(WAIT_SLICE_S,
                                                        max(0.0, end - time.monotonic()))
            try:
                return proc.communicate(timeout=wait)
            except subprocess.TimeoutExpired:
                if end is not None and time.monotonic() >= end:
                    raise
    except BaseException as exc:
        proc.kill()
        _, stderr = proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            exc.stderr = stderr
        raise


def wait(proc: subprocess.Popen[bytes]) -> int:
    """``proc.wait()`` in slices of :data:`WAIT_SLICE_S`, for a process whose pipes the
    caller handles; its exit code. Any exception meanwhile (a stage's watchdog) kills and
    reaps it first."""
    try:
        while True:
            try:
                return proc.wait(timeout=WAIT_SLICE_S)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.kill()
        proc.wait()
        raise


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
    formats: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``ffprobe``'s format and streams of ``path`` as a dict (raises ``error`` if unreadable).

    With ``formats`` (an untrusted upload), only those demuxers may read the file: any
    other raises :class:`InputError` ``input.unsupported_format`` and no file it names
    is opened.
    """
    argv = [ff.ffprobe_bin, "-v", "error", "-print_format", "json",
            "-show_format", "-show_streams", "-protocol_whitelist", PROTOCOLS]
    if formats is not None:
        argv += ["-format_whitelist", ",".join(formats)]
    argv.append(str(path))
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise _binary_missing(ff.ffprobe_bin) from None
    except subprocess.TimeoutExpired:
        raise error(f"ffprobe ran longer than {timeout} s on {path}", code=code) from None
    name = Path(path).name
    if proc.returncode != 0:
        raise _refused(name, proc.stderr) or failure(error, code, f"ffprobe of {name}",
                                                     proc.returncode, proc.stderr)
    info: dict[str, Any] = json.loads(proc.stdout or b"{}")
    info.setdefault("streams", [])
    info.setdefault("format", {})
    found = str(info["format"].get("format_name", ""))
    if formats is not None and not demuxer_allowed(found, formats):
        raise InputError(f"{name} is a {found or 'unknown'} file, not a supported "
                         "single-file media container", code="input.unsupported_format")
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
