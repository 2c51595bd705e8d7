"""Fetch an ``s3://bucket/key`` input with the object store's endpoint and credentials."""

from __future__ import annotations

from typing import BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.errors import InputError, TransportError
from pipeline.settings import Settings
from pipeline.storage.client import error_code, error_status, make_client

from .urls import Ref

CHUNK = 1024 * 1024
_MISSING = ("NoSuchKey", "NoSuchBucket", "NotFound", "404")


def fetch_s3(ref: Ref, out: BinaryIO, settings: Settings) -> int:
    """Stream the object into ``out``; return the byte count.

    ``input.not_found`` for a missing bucket or key, ``input.too_large`` past the cap,
    ``input.unreachable`` when access is denied, a recoverable ``TransportError`` for
    5xx answers and connection failures.
    """
    client = make_client(settings, timeout=settings.fetch_timeout_s)
    where = f"s3://{ref.bucket}/{ref.key}"
    limit = settings.max_input_bytes
    try:
        answer = client.get_object(Bucket=ref.bucket, Key=ref.key)
        if int(answer.get("ContentLength", 0)) > limit:
            answer["Body"].close()
            raise InputError(f"{where} is larger than SONIC_MAX_INPUT_BYTES ({limit})",
                             code="input.too_large")
        total, body = 0, answer["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise InputError(f"{where} is larger than SONIC_MAX_INPUT_BYTES ({limit})",
                                     code="input.too_large")
                out.write(chunk)
        finally:
            body.close()
        return total
    except ClientError as exc:
        code, status = error_code(exc), error_status(exc)
        if code in _MISSING or status == 404:
            raise InputError(f"{where} does not exist", code="input.not_found") from None
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout"):
            raise TransportError(f"object store answered {status} {code} for {where}") from None
        raise InputError(f"object store refused {where}: {status} {code}",
                         code="input.unreachable") from None
    except BotoCoreError as exc:
        raise TransportError(f"object store unreachable for {where}: "
                             f"{type(exc).__name__}") from None
