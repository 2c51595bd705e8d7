"""Fetch an http(s) input: allow-listed hosts, checked addresses, capped size, manual redirects."""

from __future__ import annotations

import time
from typing import BinaryIO
from urllib.parse import urljoin

import urllib3

from pipeline.errors import InputError, TransportError
from pipeline.settings import Settings

from . import net
from .urls import Ref, check_url, redact

#: Redirects followed at most; each hop is checked like the first URL.
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
#: Answers worth retrying later (the server or a proxy is busy or failing).
RETRYABLE = (408, 425, 429, 500, 502, 503, 504)
CHUNK = 64 * 1024


def fetch_http(ref: Ref, out: BinaryIO, settings: Settings) -> int:
    """Stream ``ref`` into ``out``; return the byte count.

    Raises ``input.forbidden_url`` (a hop not allowed), ``input.not_found`` (404/410),
    ``input.too_large``, ``input.unreachable`` (other 4xx, TLS, too many redirects) or a
    recoverable ``TransportError`` (timeouts, refused connections, 408/429/5xx, and a
    download, redirects included, longer than ``settings.fetch_total_s``: a server that
    trickles bytes just inside the per-read ``fetch_timeout_s`` cannot hold the stage).
    """
    deadline = time.monotonic() + settings.fetch_total_s
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            with net.request(ref, method="GET", allow_private=settings.allow_private_networks,
                             timeout=settings.fetch_timeout_s) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECTS and location:
                    ref = _next_hop(ref, location, settings)
                    continue
                _check_status(ref, response.status)
                return _copy(ref, response, out, settings.max_input_bytes,
                             deadline, settings.fetch_total_s)
        except net.Unreachable as exc:
            if exc.permanent:
                raise InputError(str(exc), code="input.unreachable") from None
            raise TransportError(str(exc), code="transport.timeout" if exc.timeout
                                 else "transport.error") from None
    raise InputError(f"more than {MAX_REDIRECTS} redirects from {redact(ref.url)}",
                     code="input.unreachable")


def _next_hop(ref: Ref, location: str, settings: Settings) -> Ref:
    target = urljoin(ref.url, location)
    if not target.lower().startswith(("http://", "https://")):
        raise InputError(f"{redact(ref.url)} redirects to a non-http URL",
                         code="input.forbidden_url")
    try:
        return check_url(target, settings)
    except InputError as exc:
        raise InputError(f"redirect refused: {exc.message}", code=exc.code) from None


def _check_status(ref: Ref, status: int) -> None:
    where = redact(ref.url)
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise InputError(f"{where} answered HTTP {status}", code="input.not_found")
    if status in RETRYABLE or status >= 500:
        raise TransportError(f"{where} answered HTTP {status}")
    raise InputError(f"{where} answered HTTP {status}", code="input.unreachable")


def _too_large(ref: Ref, limit: int) -> InputError:
    return InputError(f"{redact(ref.url)} is larger than SONIC_MAX_INPUT_BYTES ({limit})",
                      code="input.too_large")


def _copy(ref: Ref, response: urllib3.BaseHTTPResponse, out: BinaryIO, limit: int,
          deadline: float, total_s: float) -> int:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(ref, limit)
    total = 0
    while True:
        # read1: what one read from the socket brings (a trickle cannot hide in a chunk)
        chunk = response.read1(CHUNK, decode_content=False)
        if not chunk:
            return total
        total += len(chunk)
        if total > limit:  # the header may be absent or lie
            raise _too_large(ref, limit)
        out.write(chunk)
        if time.monotonic() > deadline:
            raise TransportError(f"downloading {redact(ref.url)} took longer than "
                                 f"SONIC_FETCH_TOTAL_S ({total_s:g} s; {total} bytes read)",
                                 code="transport.timeout")
