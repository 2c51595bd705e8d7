"""The object store interface: deterministic keys, overwrite on retry, one object per key."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: Longest key accepted (S3's own limit).
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class StoredObject:
    """What ``put_file`` stored: the key, its size in bytes, hex SHA-256 and the etag."""

    key: str
    size: int
    sha256: str
    etag: str


class ObjectStore(ABC):
    """Where final videos go. The caller picks the key (``videos/<task_id>.mp4``), so a
    retried upload overwrites the same object instead of adding another."""

    @abstractmethod
    def put_file(self, local_path: Path, key: str, content_type: str) -> StoredObject:
        """Upload ``local_path`` under ``key``, replacing any object already there."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def url(self, key: str) -> str:
        """A URL a client can download from: public base, presigned, or file URL."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""


def check_key(key: str) -> str:
    """A relative, normalised POSIX key: no empty, ``.`` or ``..`` segment, no NUL."""
    parts = key.split("/")
    if (not key or len(key.encode()) > MAX_KEY_BYTES or "\x00" in key or "\\" in key
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"invalid object key {key!r}")
    return key


def public_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{quote(key)}"


def sha256_file(path: Path) -> tuple[str, int]:
    """Hex SHA-256 and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
