"""Admission-time checks of media and callback URLs: pure, no network I/O.

A reference is a plain absolute path or a ``file://``, ``s3://`` or ``http(s)://`` URL.
Paths must lie under one of ``settings.input_roots`` once symlinks and ``..`` are
resolved; http(s) hosts must be in ``settings.allowed_hosts`` (``*.example.com`` matches
sub-domains); an IP literal outside the public ranges is refused unless
``settings.allow_private_networks``; ``s3://`` objects must lie in a bucket (or under a
bucket prefix) of ``settings.input_buckets``. DNS answers are checked later, at fetch time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from pipeline.errors import InputError
from pipeline.settings import Settings

from .addresses import is_public, parse_ip

HTTP_SCHEMES = ("http", "https")
#: An S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Ref:
    """A checked reference. ``path`` for files; ``bucket``/``key`` for s3; ``url`` for http."""

    scheme: str
    url: str
    path: Path | None = None
    bucket: str = ""
    key: str = ""
    host: str = ""
    port: int = 0


def redact(url: str) -> str:
    """The URL without credentials, query or fragment (presigned tokens live there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.scheme in HTTP_SCHEMES:
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if _port_or_none(parts) else ""
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


def _port_or_none(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _forbidden(message: str) -> InputError:
    return InputError(message, code="input.forbidden_url")


def check_url(url: str, settings: Settings) -> Ref:
    """Check a media reference against the settings; raise ``input.forbidden_url``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _forbidden("the URL cannot be parsed") from None
    scheme = parts.scheme.lower() or "file"
    if scheme not in settings.allowed_schemes:
        raise _forbidden(f"scheme {scheme!r} is not in SONIC_ALLOWED_SCHEMES")
    if scheme == "file":
        return _check_file(url, parts, settings)
    if scheme == "s3":
        return _check_s3(url, parts, settings)
    if scheme in HTTP_SCHEMES:
        return check_http(url, settings, hosts=settings.allowed_hosts)
    raise _forbidden(f"scheme {scheme!r} is not supported")


def check_callback_url(url: str, settings: Settings) -> Ref:
    """A callback URL: http(s) to any host, private addresses only if allowed."""
    return check_http(url, settings, hosts=None)


def check_http(url: str, settings: Settings, hosts: list[str] | None) -> Ref:
    """An http(s) URL; ``hosts`` is the allow-list (None: any host)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _forbidden(f"malformed URL {redact(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES:
        raise _forbidden(f"scheme {scheme!r} is not http or https")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise _forbidden("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise _forbidden(f"credentials in the URL are not accepted ({redact(url)})")
    if hosts is not None and not host_allowed(host, hosts):
        raise _forbidden(f"host {host} is not in SONIC_ALLOWED_HOSTS")
    literal = parse_ip(host)
    if literal is not None and not settings.allow_private_networks and not is_public(literal):
        raise _forbidden(f"address {literal} is not public; "
                         "set SONIC_ALLOW_PRIVATE_NETWORKS to allow it")
    default = 443 if scheme == "https" else 80
    return Ref(scheme, url, host=host, port=port or default)


def host_allowed(host: str, hosts: list[str]) -> bool:
    for entry in (h.strip().rstrip(".").lower() for h in hosts):
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry.strip("[]"):
            return True
    return False


def _check_s3(url: str, parts: SplitResult, settings: Settings) -> Ref:
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise _forbidden("an s3 URL needs a bucket and a key: s3://bucket/key")
    if not _BUCKET.fullmatch(bucket):
        # Not echoed: it may hold credentials (s3://key:secret@bucket/...).
        raise _forbidden("the s3 URL does not name a valid bucket (3-63 of a-z 0-9 . -)")
    if not bucket_allowed(bucket, key, settings.input_buckets):
        raise _forbidden(f"s3://{bucket}/{key} is outside SONIC_INPUT_BUCKETS")
    return Ref("s3", url, bucket=bucket, key=key)


def bucket_allowed(bucket: str, key: str, entries: list[str]) -> bool:
    """True if an entry (``bucket`` or ``bucket/prefix``) of ``entries`` covers the object.

    Under a prefix, a key with ``.`` or ``..`` segments is refused: a store that
    normalises paths could resolve it outside the prefix.
    """
    segments = key.split("/")
    for entry in entries:
        name, _, prefix = entry.strip().strip("/").partition("/")
        if name != bucket:
            continue
        if not prefix:
            return True
        if "." not in segments and ".." not in segments and key.startswith(prefix + "/"):
            return True
    return False


def _check_file(url: str, parts: SplitResult, settings: Settings) -> Ref:
    if parts.scheme:
        if parts.netloc not in ("", "localhost"):
            raise _forbidden("a file URL must name a local path (file:///...)")
        raw = unquote(parts.path)
    else:
        raw = url
    if "\x00" in raw or not raw.startswith("/"):
        raise _forbidden("a path must be absolute")
    resolved = under_roots(Path(raw), settings.input_roots)
    return Ref("file", url, path=resolved)


def under_roots(path: Path, roots: list[Path]) -> Path:
    """``path`` with symlinks and ``..`` resolved, if it lies under one of ``roots``."""
    resolved = Path(os.path.realpath(path))
    for root in roots:
        if resolved.is_relative_to(os.path.realpath(root)):
            return resolved
    raise _forbidden(f"{path} is outside SONIC_INPUT_ROOTS")
