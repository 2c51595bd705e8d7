"""LocalStore: atomic writes, one object per key, SHA-256 recorded, URLs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.settings import load
from pipeline.storage import LocalStore, get_store


def test_put_twice_under_one_key_keeps_one_object_with_the_latest_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    first.write_bytes(b"first video")
    second.write_bytes(b"second, longer video")

    stored = store.put_file(first, "videos/t1.mp4", "video/mp4")
    assert stored.sha256 == hashlib.sha256(b"first video").hexdigest() and stored.size == 11
    again = store.put_file(second, "videos/t1.mp4", "video/mp4")

    assert again.sha256 == hashlib.sha256(b"second, longer video").hexdigest()
    assert store.sha256("videos/t1.mp4") == again.sha256
    assert [p.name for p in (tmp_path / "objects" / "videos").iterdir()] == ["t1.mp4"]
    assert store.path("videos/t1.mp4").read_bytes() == b"second, longer video"
    assert store.exists("videos/t1.mp4") and not store.exists("videos/t2.mp4")


def test_urls_delete_and_keys(tmp_path: Path) -> None:
    src = tmp_path / "v.mp4"
    src.write_bytes(b"v")
    store = get_store(load(state_dir=tmp_path / "state", storage_backend="local"))
    assert isinstance(store, LocalStore)
    store.put_file(src, "videos/a b.mp4", "video/mp4")
    url = store.url("videos/a b.mp4")
    assert url.startswith("file://") and url.endswith("/videos/a%20b.mp4")

    cdn = LocalStore(tmp_path / "state" / "objects", "https://cdn.example.com/media/")
    assert cdn.url("videos/a b.mp4") == "https://cdn.example.com/media/videos/a%20b.mp4"

    store.delete("videos/a b.mp4")
    store.delete("videos/a b.mp4")  # idempotent
    assert not store.exists("videos/a b.mp4") and store.sha256("videos/a b.mp4") is None

    for bad in ("", "/abs", "a/../b", "a//b", "./a", ".meta/x"):
        with pytest.raises(ValueError):
            store.put_file(src, bad, "video/mp4")
