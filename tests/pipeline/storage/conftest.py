"""A real MinIO server for the S3 tests, on a free loopback port with a scratch data dir.

The binary is the one ``ops/s3.py install`` puts in ``<state>/bin`` (built if missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.s3 import MinIO, install_minio
from pipeline.settings import Settings, load
from pipeline.storage.s3 import S3Store
from tests.support.server import free_port


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinIO]:
    bin_dir = load().state_dir / "bin"
    install_minio(bin_dir)
    settings = load(state_dir=tmp_path_factory.mktemp("s3-state"), s3_bucket="sonic-test",
                    storage_dir=None)
    server = MinIO(settings, port=free_port(), bin_dir=bin_dir)
    server.wait_ready(server.start())
    server.ensure()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(minio: MinIO) -> Settings:
    return minio.store_settings()


@pytest.fixture
def store(s3_settings: Settings) -> S3Store:
    return S3Store(s3_settings)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
