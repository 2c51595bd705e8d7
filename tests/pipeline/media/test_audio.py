from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import CODES, AudioError, PipelineError
from pipeline.media.audio import (MIN_SPEECH_S, SAMPLE_RATE, SPEECH_DBFS, WINDOW,
                                  delivery_format, load_wav, prepare_audio, window_levels_dbfs)
from pipeline.media.ffmpeg import probe, stream
from tests.pipeline.media.builders import (FIELD, at_level, clip, encode, hum, noise,
                                           playlists, speech_samples, surround, watched_fifo)
from tests.pipeline.media.helpers import PORTRAIT, write_wav


def test_speech_is_decoded_to_16k_mono_and_measured(speech_wav: Path, tmp_path: Path) -> None:
    info = prepare_audio(speech_wav, tmp_path / "a.wav", max_s=60)

    samples = load_wav(info.path)
    assert info.sample_rate == SAMPLE_RATE
    assert info.samples == len(samples)
    assert info.duration_s == pytest.approx(len(samples) / SAMPLE_RATE)
    assert 1.0 < info.duration_s < 5.0
    assert info.level_dbfs > -40 and info.speech_s > 0.5
    assert samples.dtype == np.float32 and np.abs(samples).max() <= 1.0
    assert not list(tmp_path.glob("*.partial*"))


def test_digital_silence_is_rejected(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "quiet.wav", np.zeros(SAMPLE_RATE * 2))

    with pytest.raises(AudioError) as caught:
        prepare_audio(src, tmp_path / "a.wav", max_s=60)

    assert caught.value.code == "audio.silent"
    assert "dBFS" in caught.value.message
    assert not (tmp_path / "a.wav").exists()


def test_faint_hiss_is_silent_too(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).normal(0, 10 ** (-70 / 20), SAMPLE_RATE * 2)
    src = write_wav(tmp_path / "hiss.wav", noise)

    with pytest.raises(AudioError) as caught:
        prepare_audio(src, tmp_path / "a.wav", max_s=60)
    assert caught.value.code == "audio.silent"


def test_garbage_bytes_are_undecodable(tmp_path: Path) -> None:
    src = tmp_path / "audio.mp3"
    src.write_bytes(b"this is not audio at all" * 100)

    with pytest.raises(AudioError) as caught:
        prepare_audio(src, tmp_path / "a.wav", max_s=60)

    assert caught.value.code == "audio.undecodable"
    assert caught.value.detail["exit_code"] != 0
    assert caught.value.detail["stderr_tail"]


def test_missing_file_is_undecodable(tmp_path: Path) -> None:
    with pytest.raises(AudioError) as caught:
        prepare_audio(tmp_path / "nope.wav", tmp_path / "a.wav", max_s=60)
    assert caught.value.code == "audio.undecodable"


def test_too_long_is_rejected_with_the_real_length(speech_wav: Path, tmp_path: Path) -> None:
    with pytest.raises(AudioError) as caught:
        prepare_audio(speech_wav, tmp_path / "a.wav", max_s=1.0)

    assert caught.value.code == "audio.too_long"
    assert "limit is 1 s" in caught.value.message


def test_error_codes_are_documented() -> None:
    assert {"audio.silent", "audio.undecodable", "audio.too_long"} <= set(CODES)


# --- the silence rule: speech anywhere in the clip counts ----------------------------------


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_samples(tmp_path_factory.mktemp("say"), "Good morning, this is me.")


@pytest.fixture(scope="module")
def word(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_samples(tmp_path_factory.mktemp("word"), "Yes.")


@pytest.mark.parametrize("shape", ["line after 18 s of room noise", "line in the middle",
                                   "single word after 5 s", "quiet speech at -35 dBFS",
                                   "speech over -55 dBFS hum"])
def test_speech_anywhere_is_not_silent(shape: str, sentence: np.ndarray, word: np.ndarray,
                                       tmp_path: Path) -> None:
    room = lambda s, seed=0: noise(s, -75, seed=seed)  # noqa: E731
    parts = {
        "line after 18 s of room noise": [room(18), at_level(sentence, -20)],
        "line in the middle": [room(6), at_level(sentence, -25), room(6, 1)],
        "single word after 5 s": [room(5), at_level(word, -25), room(0.5, 2)],
        "quiet speech at -35 dBFS": [room(1), at_level(sentence, -35), room(1, 1)],
        "speech over -55 dBFS hum": [hum(2, -55), hum(len(sentence) / 16000, -55)
                                     + at_level(sentence, -30)],
    }[shape]
    src = clip(tmp_path / "in.wav", *parts)

    info = prepare_audio(src, tmp_path / "a.wav", max_s=60)

    total = sum(len(p) for p in parts) / SAMPLE_RATE
    assert info.duration_s == pytest.approx(total, abs=0.01)  # nothing trimmed
    assert info.speech_s >= MIN_SPEECH_S and info.level_dbfs > SPEECH_DBFS


@pytest.mark.parametrize("shape", ["digital silence", "room noise at -75 dBFS",
                                   "noise at -70 dBFS", "noise at -55 dBFS", "50 Hz hum at -60",
                                   "a lone click", "a DC offset"])
def test_clips_without_speech_are_silent(shape: str, tmp_path: Path) -> None:
    click = np.zeros(SAMPLE_RATE * 3)
    click[SAMPLE_RATE: SAMPLE_RATE + 40] = 0.9  # 2.5 ms at full scale: one window, not speech
    samples = {
        "digital silence": np.zeros(SAMPLE_RATE * 3),
        "room noise at -75 dBFS": noise(20, -75),
        "noise at -70 dBFS": noise(3, -70),
        "noise at -55 dBFS": noise(3, -55),
        "50 Hz hum at -60": hum(3, -60),
        "a lone click": click,
        "a DC offset": np.full(SAMPLE_RATE * 3, 0.05) + noise(3, -80),
    }[shape]
    src = clip(tmp_path / "in.wav", samples)

    with pytest.raises(AudioError) as caught:
        prepare_audio(src, tmp_path / "a.wav", max_s=60, keep=tmp_path / "keep.flac")

    assert caught.value.code == "audio.silent"
    assert f"{SPEECH_DBFS:g} dBFS" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]  # no partial left


def test_the_leading_silence_field_input_passes_with_its_full_length(tmp_path: Path) -> None:
    info = prepare_audio(FIELD / "c09_leading_silence.flac", tmp_path / "a.wav", max_s=60)

    assert info.duration_s == pytest.approx(18.8, abs=0.01)
    assert 0.1 <= info.speech_s <= 1.0  # the short line at the end, nothing before it
    levels = window_levels_dbfs(load_wav(info.path))
    assert levels[: 17 * 50].max() < -60  # the lead-in is room noise


def test_window_levels_remove_the_mean_and_measure_the_tail() -> None:
    levels = window_levels_dbfs(np.concatenate([np.full(WINDOW, 0.5), hum(0.01, -20, hz=400)]))
    assert len(levels) == 2 and levels[0] == -np.inf
    assert levels[1] == pytest.approx(-20, abs=1.5)


# --- the user's audio, kept for the video --------------------------------------------------
@pytest.mark.parametrize("source, rate, channels, expect", [
    ("48 kHz stereo AAC", 48_000, 2, (48_000, 2)),
    ("44.1 kHz mono MP3", 44_100, 1, (44_100, 1)),
    ("48 kHz 5.1 AAC", 48_000, 6, (48_000, 2)),
    ("8 kHz mono WAV", 8_000, 1, (16_000, 1)),
    ("96 kHz stereo FLAC", 96_000, 2, (48_000, 2)),
    ("22.05 kHz mono WAV", 22_050, 1, (22_050, 1)),
])
def test_the_users_audio_is_kept_at_its_own_rate_and_channels(
        source: str, rate: int, channels: int, expect: tuple[int, int],
        tmp_path: Path) -> None:
    speech = at_level(speech_samples(tmp_path, "Good morning, this is me.", rate), -20)
    mono = clip(tmp_path / "mono.wav", speech, rate=rate)
    if "5.1" in source:
        src = surround(tmp_path / "in.m4a", speech, rate)
    elif channels == 2:
        codec = ["-c:a", "aac"] if "AAC" in source else ["-c:a", "flac"]
        src = encode(mono, tmp_path / ("in.m4a" if "AAC" in source else "in.flac"),
                     "-ac", "2", *codec)
    elif "MP3" in source:
        src = encode(mono, tmp_path / "in.mp3", "-c:a", "libmp3lame", "-b:a", "128k")
    else:
        src = mono

    info = prepare_audio(src, tmp_path / "a.wav", max_s=60, keep=tmp_path / "keep.flac")

    assert info.original is not None
    assert (info.original["sample_rate"], info.original["channels"]) == expect
    assert (info.original["source_rate"], info.original["source_channels"]) == (rate, channels)
    kept = stream(probe(tmp_path / "keep.flac"), "audio")
    assert kept is not None and kept["codec_name"] == "flac"
    assert (int(kept["sample_rate"]), kept["channels"]) == expect
    # The same decode: the kept copy lasts exactly as long as the 16 kHz one.
    assert float(kept["duration"]) == pytest.approx(info.duration_s, abs=0.002)


def test_the_kept_copy_is_sample_aligned_with_the_analysed_one(tmp_path: Path) -> None:
    src = FIELD / "c08_speech_48k_stereo.m4a"
    info = prepare_audio(src, tmp_path / "a.wav", max_s=60, keep=tmp_path / "keep.flac")
    back = encode(tmp_path / "keep.flac", tmp_path / "back.wav", "-ac", "1", "-ar", "16000",
                  "-c:a", "pcm_s16le")

    analysed, kept = load_wav(info.path), load_wav(back)
    assert len(kept) == len(analysed)
    lags = np.arange(-80, 81)
    score = [float(np.dot(analysed[80:-80], np.roll(kept, lag)[80:-80])) for lag in lags]
    assert lags[int(np.argmax(score))] == 0  # aligned to the sample (1/16 ms)


@pytest.mark.parametrize("rate, channels, expect", [
    (48_000, 2, (48_000, 2)), (44_100, 1, (44_100, 1)), (32_000, 2, (32_000, 2)),
    (8_000, 1, (16_000, 1)), (11_025, 2, (16_000, 2)), (37_800, 2, (44_100, 2)),
    (88_200, 2, (44_100, 2)), (96_000, 6, (48_000, 2)), (192_000, 1, (48_000, 1)),
])
def test_delivery_format(rate: int, channels: int, expect: tuple[int, int]) -> None:
    assert delivery_format(rate, channels) == expect


# --- playlists and lists of files are never followed -------------------------------------
@pytest.mark.parametrize("shape", ["list.m3u8", "hls-named.mp3", "file-url.m3u8",
                                   "relative.m3u8", "ffconcat.wav", "concat-lines.txt"])
def test_a_playlist_sent_as_audio_is_refused_and_opens_nothing(shape: str,
                                                                tmp_path: Path) -> None:
    upload = tmp_path / "uploads"
    upload.mkdir()
    src = playlists(upload, upload / "secret.wav")[shape]

    with watched_fifo(upload / "secret.wav") as opened:
        with pytest.raises(PipelineError) as caught:
            prepare_audio(src, tmp_path / "a.wav", max_s=60, keep=tmp_path / "keep.flac")
        assert not opened()

    expected = "audio.undecodable" if shape == "concat-lines.txt" else "input.unsupported_format"
    assert caught.value.code == expected and caught.value.code in CODES
    assert not (tmp_path / "a.wav").exists() and not (tmp_path / "keep.flac").exists()


def test_the_playlist_detector_sees_an_unrestricted_read(tmp_path: Path) -> None:
    """The check above can fail: plain ffprobe does open the file a playlist names."""
    src = playlists(tmp_path, tmp_path / "secret.wav")["hls-named.mp3"]
    with watched_fifo(tmp_path / "secret.wav") as opened:
        subprocess.run(["ffprobe", "-v", "error", str(src)], capture_output=True, timeout=30)
        assert opened()


def test_an_image_sent_as_audio_is_an_unsupported_format(tmp_path: Path) -> None:
    src = tmp_path / "audio.mp3"
    src.write_bytes(PORTRAIT.read_bytes())
    with pytest.raises(PipelineError) as caught:
        prepare_audio(src, tmp_path / "a.wav", max_s=60)
    assert caught.value.code == "input.unsupported_format"
