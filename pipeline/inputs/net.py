"""One HTTP request to a checked address: resolve once, connect by IP, keep Host and SNI.

Used for http(s) inputs and for callbacks. Redirects and retries are never followed
here; the caller decides. Failures come back as :class:`Unreachable` (``timeout`` tells
a timeout from a refused or broken connection) so each caller maps them to its own code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from .addresses import resolve_checked
from .urls import Ref, redact


class Unreachable(Exception):
    """The request did not get an HTTP answer. ``permanent``: retrying cannot help."""

    def __init__(self, message: str, *, timeout: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.permanent = permanent


def _target(url: str) -> str:
    parts = urllib3.util.parse_url(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _pool(ref: Ref, ip: str, timeout: float) -> urllib3.HTTPConnectionPool:
    options: dict[str, object] = {
        "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        "retries": False,
        "maxsize": 1,
    }
    if ref.scheme == "https":
        # Connect to the checked IP, but verify the certificate for the name and send it as SNI.
        return urllib3.HTTPSConnectionPool(
            ip, ref.port, server_hostname=ref.host, assert_hostname=ref.host,
            cert_reqs="CERT_REQUIRED", **options,  # type: ignore[arg-type]
        )
    return urllib3.HTTPConnectionPool(ip, ref.port, **options)  # type: ignore[arg-type]


@contextmanager
def request(
    ref: Ref,
    *,
    method: str,
    allow_private: bool,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Iterator[urllib3.BaseHTTPResponse]:
    """Open ``ref`` and yield the (unread, streaming) response; the connection closes after."""
    addresses = resolve_checked(ref.host, ref.port, allow_private)
    default_port = 443 if ref.scheme == "https" else 80
    host_header = ref.host if ref.port == default_port else f"{ref.host}:{ref.port}"
    if ":" in ref.host:
        host_header = f"[{ref.host}]" + ("" if ref.port == default_port else f":{ref.port}")
    sent = {"Host": host_header, "User-Agent": "sonic-pipeline", **(headers or {})}
    last: Unreachable | None = None
    for ip in addresses:
        pool = _pool(ref, str(ip), timeout)
        try:
            response = pool.urlopen(
                method, _target(ref.url), body=body, headers=sent, redirect=False,
                retries=False, preload_content=False, assert_same_host=False,
            )
        except ConnectTimeoutError as exc:  # NewConnectionError (refused) is a subclass
            pool.close()
            last = Unreachable(f"cannot connect to {redact(ref.url)}",
                               timeout=not isinstance(exc, NewConnectionError))
            continue  # another address of the same name may answer
        except Exception as exc:
            pool.close()
            raise _unreachable(ref, exc) from None
        try:
            yield response
        except HTTPError as exc:
            raise _unreachable(ref, exc) from None
        finally:
            response.release_conn()
            pool.close()
        return
    assert last is not None
    raise last


def _unreachable(ref: Ref, exc: Exception) -> Exception:
    """The Unreachable for a transport failure; any other exception is returned as it is."""
    where = redact(ref.url)
    if isinstance(exc, MaxRetryError) and isinstance(exc.reason, Exception):
        exc = exc.reason
    if isinstance(exc, NewConnectionError):
        return Unreachable(f"cannot connect to {where}")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | TimeoutError):
        return Unreachable(f"timed out talking to {where}", timeout=True)
    if isinstance(exc, SSLError):
        return Unreachable(f"TLS failed for {where}: certificate or handshake rejected",
                           permanent=True)
    if isinstance(exc, ProtocolError | HTTPError | OSError):
        return Unreachable(f"connection to {where} failed: {type(exc).__name__}")
    return exc
