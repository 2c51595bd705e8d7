"""``fetch_input``: copy one referenced input into the work directory, atomically.

The bytes land in a temporary file beside the destination and are renamed into place
only when complete, so a crash or a refused input never leaves a partial file behind.
Fetched files are named by their role (:func:`role_path`: ``image.png``, ``audio.mp3``),
never by the URL's base name: two URLs ending in the same name cannot overwrite each
other, and no name chosen upstream reaches the file system or ffmpeg.
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


#: Roles of the inputs of a job, and the extensions their fetched copies may keep.
ROLE_EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}),
    "audio": frozenset({".wav", ".mp3", ".m4a", ".mp4", ".aac", ".flac", ".ogg", ".oga",
                        ".opus", ".webm", ".mka", ".mkv", ".mov", ".aif", ".aiff", ".caf",
                        ".amr", ".wma", ".au", ".wv", ".ape", ".avi", ".ac3", ".ts"}),
}


def role_path(directory: Path, role: str, url: str) -> Path:
    """Where the ``role`` input of a job lands: ``<directory>/<role><ext>``.

    ``ext`` is the URL's own extension when it is a known one for the role (lower case),
    else ``.bin``; the content decides how the file is read, never the name.
    """
    if role not in ROLE_EXTENSIONS:
        raise ValueError(f"unknown input role {role!r}")
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return directory / (role + (suffix if suffix in ROLE_EXTENSIONS[role] else ".bin"))


def fetch_input(url: str, dest: Path, settings: Settings) -> Path:
    """Fetch ``url`` to the file ``dest`` and return it. Re-running overwrites the same
    file (idempotent). ``dest`` is a file path (see :func:`role_path`), never a directory.
    """
    if dest.is_dir():
        raise ValueError(f"{dest} is a directory: name the file (role_path)")
    ref = check_url(url, settings)
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
