"""s3:// inputs on the real MinIO: what the worker's keys can read is not what it may fetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.inputs import fetch_input
from pipeline.settings import Settings
from pipeline.storage.s3 import S3Store


def test_another_bucket_the_keys_can_read_is_refused(s3_settings: Settings, tmp_path: Path,
                                                     unique: str) -> None:
    uploads = S3Store(s3_settings.model_copy(update={"s3_bucket": f"uploads-{unique}"}))
    uploads.ensure_bucket()
    results = S3Store(s3_settings)  # the results bucket: every tenant's videos
    src = tmp_path / "src.bin"
    src.write_bytes(b"tenant-bytes")
    uploads.put_file(src, "incoming/voice.wav", "audio/wav")
    results.put_file(src, f"videos/{unique}.mp4", "video/mp4")
    settings = s3_settings.model_copy(update={"input_buckets": [f"uploads-{unique}/incoming"]})

    got = fetch_input(f"s3://uploads-{unique}/incoming/voice.wav", tmp_path / "a.wav", settings)
    assert got.read_bytes() == b"tenant-bytes"
    for url in (f"s3://{results.bucket}/videos/{unique}.mp4",
                f"s3://uploads-{unique}/incoming/../videos/x.mp4"):
        with pytest.raises(InputError) as exc:
            fetch_input(url, tmp_path / "b.bin", settings)
        assert exc.value.code == "input.forbidden_url"
    assert not (tmp_path / "b.bin").exists()
