"""Test media made at test time: speech from espeak-ng, silence, and the bundled portrait."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "data"
PORTRAIT = DATA / "astronaut.jpg"
#: About 1.5 s of speech with pauses: loud and quiet stretches for the mouth to follow.
SENTENCE = "Hello. Open wide, and say ah."


def speak(path: Path, text: str = SENTENCE, speed: int = 175) -> Path:
    """Synthesize ``text`` with espeak-ng into ``path`` (22.05 kHz WAV)."""
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    """Write float samples in [-1, 1] as mono s16 WAV."""
    data = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.tobytes())
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def speech_wav(media_dir: Path) -> Path:
    """Real synthesized speech, as espeak-ng writes it (not yet prepared)."""
    return speak(media_dir / "speech.wav")


@pytest.fixture(scope="session")
def speech_16k(media_dir: Path, speech_wav: Path) -> Iterator[Path]:
    """The speech prepared the way the preprocess stage does (16 kHz mono s16)."""
    from pipeline.media.audio import prepare_audio

    yield prepare_audio(speech_wav, media_dir / "speech16k.wav", max_s=60).path


@pytest.fixture(scope="session")
def portrait_crop(media_dir: Path) -> Path:
    """The bundled portrait cropped to 128 x 128 around the face."""
    from pipeline.media.image import prepare_image

    crop = prepare_image(PORTRAIT, media_dir / "crop128.png", min_resolution=128)
    assert crop.path is not None
    return crop.path
