"""``fetch_input``: copy one referenced input into the work directory, atomically.

The bytes land in a temporary file beside the destination and are renamed into place
only when complete, so a crash or a refused input never leaves a partial file behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

from pipeline.atomic import atomic_write
from pipeline.errors import InputError
from pipeline.settings import Settings

from .http import fetch_http
from .urls import Ref, check_url, under_roots


def fetch_input(url: str, dest: Path, settings: Settings) -> Path:
    """Fetch ``url`` to ``dest`` and return the file's path.

    ``dest`` is the file to write; if it is an existing directory the file is written in
    it under the URL's base name. Re-running overwrites the same file (idempotent).
    """
    ref = check_url(url, settings)
    if dest.is_dir():
        dest = dest / _basename(url)
    copy: Callable[[BinaryIO], int]
    if ref.scheme == "file":
        copy = lambda out: _copy_local(ref, out, settings)  # noqa: E731
    elif ref.scheme == "s3":
        from .s3 import fetch_s3  # boto3 only where s3 inputs are fetched

        copy = lambda out: fetch_s3(ref, out, settings)  # noqa: E731
    else:
        copy = lambda out: fetch_http(ref, out, settings)  # noqa: E731
    atomic_write(dest, copy)
    return dest


def _basename(url: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name
    return name if name not in ("", ".", "..") else "input"


def _copy_local(ref: Ref, out: BinaryIO, settings: Settings) -> int:
    assert ref.path is not None
    try:
        src = open(ref.path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"{ref.url} does not exist", code="input.not_found") from None
    except IsADirectoryError:
        raise InputError(f"{ref.url} is a directory", code="input.not_found") from None
    except PermissionError:
        raise InputError(f"{ref.url} is not readable", code="input.unreachable") from None
    with src:
        # What was opened is what counts: a path swapped for a symlink after the check
        # still has to lie under the roots.
        under_roots(Path(os.readlink(f"/proc/self/fd/{src.fileno()}")), settings.input_roots)
        if os.fstat(src.fileno()).st_size > settings.max_input_bytes:
            raise InputError(f"{ref.url} is larger than SONIC_MAX_INPUT_BYTES "
                             f"({settings.max_input_bytes})", code="input.too_large")
        shutil.copyfileobj(src, out, 1024 * 1024)
        return out.tell()
