"""S3Store against a real MinIO: overwrite on retry, checksums, URLs, error codes."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import requests

from ops.s3 import MinIO
from pipeline.errors import CODES, PermanentError, StorageError
from pipeline.settings import Settings
from pipeline.storage import get_store
from pipeline.storage.s3 import S3Store
from tests.support.server import free_port

from .conftest import write


def test_put_overwrite_exists_delete(store: S3Store, tmp_path: Path, unique: str) -> None:
    key = f"videos/{unique}.mp4"
    assert not store.exists(key)
    first = store.put_file(write(tmp_path / "a", b"first"), key, "video/mp4")
    assert first.sha256 == hashlib.sha256(b"first").hexdigest() and first.size == 5

    second = store.put_file(write(tmp_path / "b", b"second!"), key, "video/mp4")
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=key)
    assert [o["Key"] for o in listed["Contents"]] == [key]  # a retry never duplicates
    head = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == 7
    assert head["Metadata"]["sha256"] == second.sha256
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == second.sha256
    assert second.etag and store.exists(key)

    store.delete(key)
    store.delete(key)
    assert not store.exists(key)


def test_presigned_url_downloads(store: S3Store, tmp_path: Path, unique: str) -> None:
    key = f"videos/{unique}.mp4"
    store.put_file(write(tmp_path / "v", b"video bytes"), key, "video/mp4")
    url = store.url(key)
    assert "X-Amz-Signature=" in url
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200 and answer.content == b"video bytes"
    assert answer.headers["Content-Type"] == "video/mp4"


def test_public_base_url_is_used_when_set(s3_settings: Settings) -> None:
    store = get_store(s3_settings.model_copy(update={"public_base_url": "https://cdn.example.com/v"}))
    assert isinstance(store, S3Store)
    assert store.url("videos/t 1.mp4") == "https://cdn.example.com/v/videos/t%201.mp4"


def test_server_down_is_a_recoverable_storage_error(s3_settings: Settings, tmp_path: Path) -> None:
    down = S3Store(s3_settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"}))
    with pytest.raises(StorageError) as exc:
        down.put_file(write(tmp_path / "v", b"x"), "videos/x.mp4", "video/mp4")
    assert exc.value.retryable and exc.value.code == "storage.unavailable"
    with pytest.raises(StorageError):
        down.exists("videos/x.mp4")


def test_missing_bucket_or_bad_credentials_are_permanent(
        s3_settings: Settings, tmp_path: Path) -> None:
    from pydantic import SecretStr

    wrong = [s3_settings.model_copy(update={"s3_bucket": "no-such-bucket"}),
             s3_settings.model_copy(update={"s3_secret_key": SecretStr("not-the-secret")})]
    for settings in wrong:
        with pytest.raises(PermanentError) as exc:
            S3Store(settings).put_file(write(tmp_path / "v", b"x"), "videos/x.mp4", "video/mp4")
        assert exc.value.code == "storage.misconfigured" and exc.value.code in CODES
        assert not exc.value.retryable and "not-the-secret" not in str(exc.value)


def test_ops_up_is_idempotent(minio: MinIO) -> None:
    assert minio.pid() is not None and minio.probe()
    assert minio.ensure() is None  # bucket already there: nothing to do
    ok, line = minio.status()
    assert ok and "running" in line
