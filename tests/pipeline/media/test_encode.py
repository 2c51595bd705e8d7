from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.media.frames import frame_count
from pipeline.errors import Cancelled, EncodeError
from pipeline.media.audio import SAMPLE_RATE, load_wav, prepare_audio
from pipeline.media.encode import encode_video, make_poster, remux_faststart, replace_audio
from pipeline.media.ffmpeg import duration_s, probe, run_ffmpeg, stream
from tests.pipeline.media.builders import (FIELD, at_level, clip, encode, speech_samples,
                                           surround)

SIZE = (128, 96)


def _frames(count: int) -> np.ndarray:
    """Frames whose brightness encodes their index, so order and count are visible."""
    levels = np.linspace(20, 235, count).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, SIZE[1], SIZE[0], 3)).copy()


def _check(mp4: Path, audio: Path) -> dict[str, Any]:
    info = probe(mp4)
    video, sound = stream(info, "video"), stream(info, "audio")
    assert video is not None and sound is not None
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == SIZE
    assert sound["codec_name"] == "aac"
    audio_s = len(load_wav(audio)) / SAMPLE_RATE
    assert duration_s(info) == pytest.approx(audio_s, abs=0.1)
    assert float(sound["duration"]) == pytest.approx(audio_s, abs=0.1)
    return info


def test_streamed_batches_become_h264_aac_as_long_as_the_audio(speech_16k: Path,
                                                               tmp_path: Path) -> None:
    frames = _frames(2 * (len(load_wav(speech_16k)) // 1280) - 1)  # Sonic's 2N-1: short
    batches = (frames[i:i + 8] for i in range(0, len(frames), 8))

    result = encode_video(batches, speech_16k, tmp_path / "out.mp4", size=SIZE, crf=18)

    info = _check(result.path, speech_16k)
    assert result.frames >= len(frames)
    video = stream(info, "video")
    assert video is not None and int(video["nb_frames"]) == result.frames
    assert not list(tmp_path.glob("*.partial*"))


def test_a_raw_frames_file_is_read_directly(speech_16k: Path, tmp_path: Path) -> None:
    _frames(20).tofile(tmp_path / "frames.rgb")  # far too few: the last frame is held

    result = encode_video(tmp_path / "frames.rgb", speech_16k, tmp_path / "out.mp4", size=SIZE)

    _check(result.path, speech_16k)


def test_extra_frames_are_cut_to_the_audio(speech_16k: Path, tmp_path: Path) -> None:
    result = encode_video(iter(_frames(500)), speech_16k, tmp_path / "out.mp4", size=SIZE)

    _check(result.path, speech_16k)


def test_poster_and_faststart_remux(speech_16k: Path, tmp_path: Path) -> None:
    encode_video(iter(_frames(30)), speech_16k, tmp_path / "out.mp4", size=SIZE)

    poster = make_poster(tmp_path / "out.mp4", tmp_path / "poster.jpg")
    copy = remux_faststart(tmp_path / "out.mp4", tmp_path / "copy.mp4")

    assert poster.read_bytes()[:2] == b"\xff\xd8"
    picture = stream(probe(poster), "video")
    assert picture is not None and picture["width"] == SIZE[0]
    _check(copy, speech_16k)


def test_a_bad_audio_input_fails_with_exit_code_and_stderr(tmp_path: Path) -> None:
    bogus = tmp_path / "speech.wav"
    bogus.write_bytes(b"RIFF not really a wav")

    with pytest.raises(EncodeError) as caught:
        encode_video(iter(_frames(10)), bogus, tmp_path / "out.mp4", size=SIZE)

    assert caught.value.code == "encode.failed"
    assert caught.value.detail["exit_code"] != 0
    assert "speech.wav" in caught.value.detail["stderr_tail"]


def test_ffmpeg_failing_mid_stream_reports_exit_code_and_stderr(tmp_path: Path) -> None:
    # Given "audio" that is a silent video: ffmpeg refuses the audio map after starting.
    no_audio = tmp_path / "no_audio.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=2",
                "-c:v", "libx264", "-y", no_audio])

    with pytest.raises(EncodeError) as caught:
        encode_video(iter(_frames(200)), no_audio, tmp_path / "out.mp4", size=SIZE)

    error = caught.value
    assert error.detail["exit_code"] not in (0, None)
    assert "matches no streams" in error.detail["stderr_tail"]
    assert f"exit code {error.detail['exit_code']}" in error.message
    assert not (tmp_path / "out.mp4").exists()


def test_a_failing_frame_source_stops_ffmpeg_and_leaves_nothing(speech_16k: Path,
                                                                tmp_path: Path) -> None:
    def frames() -> Iterator[np.ndarray]:
        yield _frames(10)
        raise Cancelled("render stopped: cancelled")

    with pytest.raises(Cancelled):
        encode_video(frames(), speech_16k, tmp_path / "out.mp4", size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_an_out_of_range_crf_is_refused_before_running(speech_16k: Path,
                                                      tmp_path: Path) -> None:
    # ffmpeg 5.1 accepts -crf 99 silently; we do not.
    with pytest.raises(EncodeError, match="crf"):
        encode_video(iter(_frames(10)), speech_16k, tmp_path / "out.mp4", size=SIZE, crf=99)


def test_frames_of_the_wrong_size_are_refused(speech_16k: Path, tmp_path: Path) -> None:
    wrong = np.zeros((4, 10, 10, 3), dtype=np.uint8)
    with pytest.raises(EncodeError):
        encode_video(iter([wrong]), speech_16k, tmp_path / "out.mp4", size=SIZE)


# --- the user's audio in the video ------------------------------------------------------


@pytest.mark.parametrize("source, expect", [
    ("c08_speech_48k_stereo.m4a", (48_000, 2)), ("44k1 mono mp3", (44_100, 1)),
    ("5.1 aac", (48_000, 2)), ("8k wav", (16_000, 1)),
])
def test_the_video_carries_the_kept_audio_at_its_rate_and_channels(
        source: str, expect: tuple[int, int], tmp_path: Path) -> None:
    if source.startswith("c08"):
        src = FIELD / source
    else:
        rate = {"44k1 mono mp3": 44_100, "5.1 aac": 48_000, "8k wav": 8_000}[source]
        speech = at_level(speech_samples(tmp_path, "Open wide and say ah.", rate), -20)
        if source == "5.1 aac":
            src = surround(tmp_path / "in.m4a", speech, rate)
        elif source == "8k wav":
            src = clip(tmp_path / "in.wav", speech, rate=rate)
        else:
            src = encode(clip(tmp_path / "m.wav", speech, rate=rate), tmp_path / "in.mp3")
    info = prepare_audio(src, tmp_path / "a.wav", max_s=60, keep=tmp_path / "keep.flac")
    frames = frame_count(info.samples)  # what the engine renders: 2N-1, a little short

    result = encode_video(iter(_frames(frames)), tmp_path / "keep.flac", tmp_path / "out.mp4",
                          size=SIZE, seconds=info.duration_s)

    probed = probe(result.path)
    video, sound = stream(probed, "video"), stream(probed, "audio")
    assert video is not None and sound is not None and sound["codec_name"] == "aac"
    assert (int(sound["sample_rate"]), sound["channels"]) == expect
    assert float(video["duration"]) == pytest.approx(info.duration_s, abs=1 / 25)
    # The audio ends with the last frame: all the speech, padded, never longer.
    assert float(sound["duration"]) <= float(video["duration"]) + 0.001
    assert float(sound["duration"]) == pytest.approx(float(video["duration"]), abs=0.005)


def test_the_video_audio_is_aligned_with_what_the_engine_heard(tmp_path: Path) -> None:
    info = prepare_audio(FIELD / "c08_speech_48k_stereo.m4a", tmp_path / "a.wav", max_s=60,
                         keep=tmp_path / "keep.flac")
    encode_video(iter(_frames(frame_count(info.samples))), tmp_path / "keep.flac",
                 tmp_path / "out.mp4", size=SIZE, seconds=info.duration_s)
    run_ffmpeg(["-i", tmp_path / "out.mp4", "-map", "0:a:0", "-ac", "1", "-ar", "16000",
                "-c:a", "pcm_s16le", "-y", tmp_path / "back.wav"])

    heard, muxed = load_wav(info.path), load_wav(tmp_path / "back.wav")
    span = slice(1600, min(len(heard), len(muxed)) - 1600)
    lags = np.arange(-160, 161)  # +-10 ms
    score = [float(np.dot(heard[span], np.roll(muxed, lag)[span])) for lag in lags]
    assert abs(int(lags[int(np.argmax(score))])) <= 2  # within 1/8 ms


def test_an_engine_video_gets_the_kept_audio_and_keeps_its_frames(speech_16k: Path,
                                                                  tmp_path: Path) -> None:
    """The Sonic path: its MP4 (16 kHz audio, 2N-1 frames) gets the user's 48 kHz stereo."""
    engine = encode_video(iter(_frames(61)), speech_16k, tmp_path / "engine.mp4", size=SIZE,
                          seconds=61 / 25)
    run_ffmpeg(["-i", speech_16k, "-ac", "2", "-ar", "48000", "-c:a", "flac", "-y",
                tmp_path / "keep.flac"])

    out = replace_audio(engine.path, tmp_path / "keep.flac", tmp_path / "video.mp4")

    probed = probe(out)
    video, sound = stream(probed, "video"), stream(probed, "audio")
    assert video is not None and sound is not None
    assert int(video["nb_frames"]) == 61 and float(video["duration"]) == pytest.approx(2.44)
    assert (int(sound["sample_rate"]), sound["channels"]) == (48_000, 2)
    assert float(sound["duration"]) <= float(video["duration"]) + 0.001
    assert not list(tmp_path.glob("*.partial*"))
