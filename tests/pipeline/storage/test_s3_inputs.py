"""s3:// inputs fetched from the real MinIO with the object store's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError, TransportError
from pipeline.inputs import fetch_input
from pipeline.settings import Settings
from pipeline.storage.s3 import S3Store
from tests.support.server import free_port

from .conftest import write


def test_fetch_an_s3_input(store: S3Store, s3_settings: Settings, tmp_path: Path,
                           unique: str) -> None:
    s3_settings = s3_settings.model_copy(update={"input_buckets": [store.bucket]})
    store.put_file(write(tmp_path / "src.wav", b"RIFF-audio"), f"uploads/{unique}.wav", "audio/wav")
    url = f"s3://{store.bucket}/uploads/{unique}.wav"
    assert fetch_input(url, tmp_path / "in.wav", s3_settings).read_bytes() == b"RIFF-audio"

    with pytest.raises(InputError) as missing:
        fetch_input(f"s3://{store.bucket}/uploads/none.wav", tmp_path / "x.wav", s3_settings)
    assert missing.value.code == "input.not_found"

    small = s3_settings.model_copy(update={"max_input_bytes": 5})
    with pytest.raises(InputError) as big:
        fetch_input(url, tmp_path / "y.wav", small)
    assert big.value.code == "input.too_large" and not (tmp_path / "y.wav").exists()

    down = s3_settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(TransportError) as unreachable:
        fetch_input(url, tmp_path / "z.wav", down)
    assert unreachable.value.retryable
