"""Scheme-only URL checks: light stand-ins for ``pipeline.inputs`` in decode unit tests."""

from __future__ import annotations

from urllib.parse import urlsplit

from pipeline.errors import InputError
from pipeline.settings import Settings


def scheme_check(url: str, settings: Settings) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme and scheme not in settings.allowed_schemes:
        raise InputError(f"URL scheme {scheme!r} is not allowed", code="input.forbidden_url")


def callback_scheme_check(url: str, settings: Settings) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"callback_url scheme {scheme!r} is not http(s)",
                         code="input.forbidden_url")
