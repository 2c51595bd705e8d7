from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import AudioError, ConfigError, EncodeError, InputError
from pipeline.media.ffmpeg import (AUDIO_DEMUXERS, FFmpeg, demuxer_allowed, duration_s, probe,
                                   run_ffmpeg, stream)


def test_probe_reads_streams_and_duration(speech_16k: Path) -> None:
    info = probe(speech_16k)

    audio = stream(info, "audio")
    assert audio is not None and audio["sample_rate"] == "16000" and audio["channels"] == 1
    assert stream(info, "video") is None
    assert 1.0 < (duration_s(info) or 0) < 5.0


def test_a_failed_run_carries_code_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as caught:
        run_ffmpeg(["-i", tmp_path / "missing.wav", "-f", "null", "-"],
                   error=AudioError, code="audio.undecodable")

    error = caught.value
    assert error.code == "audio.undecodable"
    assert error.detail["exit_code"] == 1
    assert "missing.wav" in error.detail["stderr_tail"]
    assert "No such file" in error.message


def test_probe_of_garbage_raises_the_requested_error(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(EncodeError) as caught:
        probe(tmp_path / "x.bin")
    assert caught.value.detail["exit_code"] != 0


def test_a_missing_binary_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        run_ffmpeg(["-version"], ff=FFmpeg(ffmpeg_bin="/nonexistent/ffmpeg"))


def test_every_input_is_limited_to_local_files_and_pipes(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:9/a.wav", "concat:/etc/hostname|/etc/hostname",
                "subfile,,start,0,end,10,,:/etc/hostname"):
        with pytest.raises(InputError) as caught:
            run_ffmpeg(["-i", url, "-f", "null", "-"])
        assert caught.value.code == "input.unsupported_format"
        assert "protocol" in caught.value.message
    with pytest.raises(InputError):
        probe("http://127.0.0.1:9/a.wav")


def test_probe_with_formats_refuses_other_demuxers(speech_16k: Path, tmp_path: Path) -> None:
    assert probe(speech_16k, formats=AUDIO_DEMUXERS)["format"]["format_name"] == "wav"
    with pytest.raises(InputError) as caught:
        probe(speech_16k, formats=("mp3",))
    assert caught.value.code == "input.unsupported_format" and "a wav file" in caught.value.message


@pytest.mark.parametrize("name, allowed", [
    ("mov,mp4,m4a,3gp,3g2,mj2", True), ("matroska,webm", True), ("wav", True),
    ("hls", False), ("concat", False), ("image2", False), ("jpeg_pipe", False),
    ("sdp", False), ("", False),
])
def test_demuxer_allowed(name: str, allowed: bool) -> None:
    assert demuxer_allowed(name, AUDIO_DEMUXERS) is allowed


def _running(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split(") ", 1)[1][0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def _stopped_by_the_watchdog(call: Any) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread, raise a stage's ``LeaseLost`` in it after 0.5 s as the
    watchdog does; (what the thread raised, seconds from the raise to its end)."""
    import threading
    import time

    from pipeline.stages.watchdog import LeaseLost, raise_in_thread

    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - what the watchdog raised
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()
    at = time.monotonic()
    assert raise_in_thread(thread.ident, LeaseLost)
    thread.join(10)
    return (raised[0] if raised else None), time.monotonic() - at


@pytest.mark.parametrize("seconds", [5, 60, 3600])
def test_a_watchdog_stop_kills_a_running_ffmpeg_within_a_slice(seconds: int) -> None:
    """A long ffmpeg call (a real-time source, as long as an hour) stops within
    WAIT_SLICE_S of the watchdog's exception, and leaves no ffmpeg behind."""
    import uuid

    from pipeline.media.ffmpeg import WAIT_SLICE_S
    from pipeline.stages.watchdog import LeaseLost

    marker = f"sonic-test-{uuid.uuid4().hex}"
    exc, took = _stopped_by_the_watchdog(lambda: run_ffmpeg(
        ["-re", "-f", "lavfi", "-i", f"anullsrc=r=8000:cl=mono:d={seconds}",
         "-metadata", f"comment={marker}", "-f", "null", "-"]))
    assert isinstance(exc, LeaseLost)
    assert took < WAIT_SLICE_S + 0.5
    assert _running(marker) == []


def test_a_watchdog_stop_kills_a_process_waited_for() -> None:
    """``wait`` (the streamed encode's and the hand-off's tail) stops the same way."""
    import subprocess
    import uuid

    from pipeline.media.ffmpeg import WAIT_SLICE_S, wait
    from pipeline.stages.watchdog import LeaseLost

    marker = f"sonic-test-{uuid.uuid4().hex}"
    proc = subprocess.Popen(["sh", "-c", f"sleep 30; echo {marker}"])
    exc, took = _stopped_by_the_watchdog(lambda: wait(proc))
    assert isinstance(exc, LeaseLost)
    assert took < WAIT_SLICE_S + 0.5
    assert proc.poll() is not None and _running(marker) == []


def test_a_timeout_still_ends_ffmpeg_with_its_code() -> None:
    import time

    started = time.monotonic()
    with pytest.raises(EncodeError) as caught:
        run_ffmpeg(["-re", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono:d=30",
                    "-f", "null", "-"], timeout=0.7)
    assert caught.value.code == "encode.failed" and "longer than 0.7 s" in caught.value.message
    assert time.monotonic() - started < 3
