"""The S3 object store (MinIO locally, any S3-compatible service in production).

Uploads send the SHA-256 as ``x-amz-checksum-sha256`` (the server verifies the bytes it
received) and keep it in the object's metadata. A retry puts the same key again: S3
replaces the object, so there is still one.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.settings import Settings

from .base import ObjectStore, StoredObject, check_key, public_url, sha256_file
from .client import error_code, error_status, make_client, storage_error


class S3Store(ObjectStore):
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.public_base_url = settings.public_base_url
        self.presign_ttl_s = settings.presign_ttl_s
        self.client = client if client is not None else make_client(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        return cls(settings)

    def put_file(self, local_path: Path, key: str, content_type: str) -> StoredObject:
        check_key(key)
        sha256, size = sha256_file(local_path)
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        try:
            with local_path.open("rb") as body:
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                    ContentType=content_type, ChecksumSHA256=checksum,
                    Metadata={"sha256": sha256},
                )
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "upload to", self.bucket, key) from None
        return StoredObject(key=key, size=size, sha256=sha256,
                            etag=str(answer.get("ETag", "")).strip('"'))

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata, or None when it does not exist."""
        check_key(key)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if error_status(exc) == 404 and error_code(exc) != "NoSuchBucket":
                return None
            raise storage_error(exc, "look up", self.bucket, key) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "look up", self.bucket, key) from None

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def url(self, key: str) -> str:
        check_key(key)
        if self.public_base_url:
            return public_url(self.public_base_url, key)
        try:
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_ttl_s,
            ))
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "presign", self.bucket, key) from None

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, "delete", self.bucket, key) from None

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True if it was created (used by ops and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if error_status(exc) != 404:
                raise storage_error(exc, "check", self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "check", self.bucket) from None
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise storage_error(exc, "create", self.bucket) from None
        except BotoCoreError as exc:
            raise storage_error(exc, "create", self.bucket) from None
        return True
