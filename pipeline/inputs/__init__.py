"""Inputs travel by reference; these check and fetch them.

    check_url(url, settings)           admission time, pure: raises input.forbidden_url
    check_callback_url(url, settings)  the same for a callback URL (any host, http(s))
    fetch_input(url, dest, settings)   stage time: DNS checked, bytes capped, atomic write
    role_path(dir, role, url)          the file an input lands in: <dir>/image.png, audio.mp3

``s3://`` inputs may only name the buckets (or bucket prefixes) in ``input_buckets``.
Permanent failures are ``InputError`` with ``input.forbidden_url``, ``input.not_found``,
``input.too_large`` or ``input.unreachable``; transient ones (timeouts, refused
connections, 408/429/5xx) are a recoverable ``TransportError``.
"""

from __future__ import annotations

from .fetch import fetch_input, role_path
from .urls import Ref, check_callback_url, check_url, redact

__all__ = ["Ref", "check_callback_url", "check_url", "fetch_input", "redact", "role_path"]
