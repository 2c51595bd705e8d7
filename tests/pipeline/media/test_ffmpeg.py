from __future__ import annotations

from pathlib import Path

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
