"""The boto3 S3 client built from settings, and the mapping of botocore failures to codes.

    5xx, 408/429, throttling, connection errors, timeouts  -> StorageError (recoverable)
    403, a missing bucket, bad credentials, other 4xx      -> storage.misconfigured (permanent)

Credentials come from settings only when set; otherwise boto3's own chain applies (an
instance role, say). Messages name the bucket and key, never a credential.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from pipeline.errors import PermanentError, PipelineError, StorageError
from pipeline.settings import Settings

#: Codes S3 servers use for transient trouble, whatever the status.
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                   "RequestTimeTooSkewed", "BadDigest", "XAmzContentSHA256Mismatch"}


def make_client(settings: Settings, *, timeout: float = 60.0) -> Any:
    """An S3 client for ``settings.s3_endpoint`` (None: AWS) with bounded retries."""
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        connect_timeout=min(timeout, 10.0),
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
    )
    session = boto3.session.Session(aws_access_key_id=access, aws_secret_access_key=secret)
    return session.client("s3", endpoint_url=settings.s3_endpoint, config=config)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def storage_error(exc: Exception, action: str, bucket: str, key: str = "") -> PipelineError:
    """The pipeline error for a failed ``action`` on ``bucket``/``key``."""
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket}"
    if isinstance(exc, NoCredentialsError):
        return PermanentError(f"{action} {where}: no S3 credentials configured "
                              "(SONIC_S3_ACCESS_KEY / SONIC_S3_SECRET_KEY)",
                              code="storage.misconfigured")
    if isinstance(exc, ClientError):
        code, status = error_code(exc), error_status(exc)
        if status >= 500 or status in (408, 429) or code in TRANSIENT_CODES:
            return StorageError(f"{action} {where}: object store answered {status} {code}")
        hint = {"NoSuchBucket": "the bucket does not exist (SONIC_S3_BUCKET)",
                "AccessDenied": "access denied (check the credentials' permissions)",
                "InvalidAccessKeyId": "unknown access key (SONIC_S3_ACCESS_KEY)",
                "SignatureDoesNotMatch": "signature rejected (SONIC_S3_SECRET_KEY)"}
        reason = hint.get(code, f"object store answered {status} {code}")
        return PermanentError(f"{action} {where}: {reason}", code="storage.misconfigured")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{action} {where}: object store unreachable ({type(exc).__name__})")
    return StorageError(f"{action} {where}: {type(exc).__name__}")
