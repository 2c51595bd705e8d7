"""Object storage for final videos: one interface, a local and an S3 implementation.

    store = get_store(settings)
    stored = store.put_file(path, f"videos/{task_id}.mp4", "video/mp4")
    video_url = store.url(stored.key)

Errors: ``StorageError`` (``storage.unavailable``, recoverable) when the store fails or
cannot be reached; ``PermanentError`` with ``storage.misconfigured`` when retrying cannot
help (missing bucket, denied access, bad credentials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.settings import Settings

from .base import ObjectStore, StoredObject
from .local import LocalStore

if TYPE_CHECKING:
    from .s3 import S3Store

__all__ = ["LocalStore", "ObjectStore", "S3Store", "StoredObject", "get_store"]


def get_store(settings: Settings) -> ObjectStore:
    """The store ``settings.storage_backend`` names (boto3 is imported only for s3)."""
    if settings.storage_backend == "s3":
        from .s3 import S3Store

        return S3Store(settings)
    return LocalStore.from_settings(settings)


def __getattr__(name: str) -> object:
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    raise AttributeError(name)
