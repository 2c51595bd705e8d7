"""The embedded object store: files under ``settings.storage_dir``.

Each object is written to a temporary file beside its final name, fsynced, then renamed:
readers see the old object or the new one, never a partial file, and a retried upload
replaces the object. A JSON sidecar under ``.meta/`` keeps its SHA-256, size and type.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

from pipeline.atomic import atomic_write
from pipeline.errors import StorageError
from pipeline.settings import Settings

from .base import ObjectStore, StoredObject, check_key, public_url

META = ".meta"


class LocalStore(ObjectStore):
    def __init__(self, root: Path, public_base_url: str | None = None) -> None:
        self.root = root
        self.public_base_url = public_base_url

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStore:
        assert settings.storage_dir is not None
        return cls(settings.storage_dir, settings.public_base_url)

    def path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == META:
            raise ValueError(f"invalid object key {key!r}: {META}/ is reserved")
        return self.root / key

    def _meta(self, key: str) -> Path:
        return self.root / META / f"{key}.json"

    def put_file(self, local_path: Path, key: str, content_type: str) -> StoredObject:
        target = self.path(key)
        try:
            sha256 = self._write(local_path, target)
            size = target.stat().st_size
            stored = StoredObject(key=key, size=size, sha256=sha256, etag=sha256[:32])
            meta = {"sha256": sha256, "size": size, "content_type": content_type}
            self._write_bytes(self._meta(key), json.dumps(meta).encode())
        except OSError as exc:
            raise StorageError(f"cannot write object {key} under {self.root}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        return stored

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def url(self, key: str) -> str:
        if self.public_base_url:
            return public_url(self.public_base_url, check_key(key))
        return self.path(key).resolve().as_uri()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self._meta(key).unlink(missing_ok=True)

    def sha256(self, key: str) -> str | None:
        """The recorded SHA-256 of ``key`` (None when absent)."""
        try:
            return str(json.loads(self._meta(key).read_text())["sha256"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _write(self, source: Path, target: Path) -> str:
        """Copy ``source`` to ``target`` atomically; return the SHA-256 of what was written."""
        digest = hashlib.sha256()

        def copy(out: BinaryIO) -> None:
            with source.open("rb") as src:
                while chunk := src.read(1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)

        atomic_write(target, copy)
        return digest.hexdigest()

    def _write_bytes(self, target: Path, data: bytes) -> None:
        def write(out: BinaryIO) -> None:
            out.write(data)

        atomic_write(target, write)
