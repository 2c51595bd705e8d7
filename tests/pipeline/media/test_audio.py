from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import CODES, AudioError
from pipeline.media.audio import SAMPLE_RATE, load_wav, prepare_audio
from tests.pipeline.media.helpers import write_wav


def test_speech_is_decoded_to_16k_mono_and_measured(speech_wav: Path, tmp_path: Path) -> None:
    info = prepare_audio(speech_wav, tmp_path / "a.wav", max_s=60)

    samples = load_wav(info.path)
    assert info.sample_rate == SAMPLE_RATE
    assert info.samples == len(samples)
    assert info.duration_s == pytest.approx(len(samples) / SAMPLE_RATE)
    assert 1.0 < info.duration_s < 5.0
    assert info.level_dbfs > -40
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
