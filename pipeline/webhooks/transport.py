"""One callback POST under a single deadline for the whole attempt.

A socket timeout bounds each read, not the attempt: a receiver that trickles its status
line or headers a byte at a time, or accepts the connection and never answers, holds a
worker for as long as it likes. Here one deadline covers everything: DNS, connect, TLS,
sending the request, the status line and every header. The request runs on httpcore's
async connection pool inside an anyio cancel scope, which stops it the moment the
deadline passes, whatever phase it is in; every socket the attempt opened is then closed
(httpcore 1.0.9 leaves the TCP socket open when a TLS handshake is cancelled).

The status decides the outcome. The body is not needed: it is not read at all after a
2xx, and after any other status at most :data:`BODY_CAP` bytes are read, while the
deadline allows, to show the receiver's reason in the delivery event.

Like ``pipeline.inputs.net`` the host is resolved once and checked, the connection goes to
the checked address, and the original name travels as ``Host`` and as the TLS server
name (certificates are verified for the name). Redirects, retries and proxies are never
used.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore

from pipeline.inputs.addresses import IPAddress, resolve_checked
from pipeline.inputs.urls import Ref, redact

#: Most bytes of a non-2xx answer's body read (to show the receiver's reason).
BODY_CAP = 1024


@dataclass
class Answer:
    """The receiver's answer: status, ``Retry-After`` (raw) and the first body bytes."""

    status: int
    retry_after: str | None = None
    body: bytearray = field(default_factory=bytearray)


class Unanswered(Exception):
    """No HTTP answer within the attempt. ``timeout``: the deadline passed (or a phase
    timed out), as opposed to a refused, reset or broken connection or a failed TLS
    handshake."""

    def __init__(self, message: str, *, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


def post(ref: Ref, body: bytes, headers: Mapping[str, str], *, allow_private: bool,
         deadline_s: float) -> Answer:
    """POST ``body`` to the checked ``ref``; return within ``deadline_s`` seconds.

    Raises :class:`Unanswered` when no status line and headers arrived in time or the
    connection failed, and ``InputError`` from the address check (``input.forbidden_url``
    for a refused address, ``input.unreachable`` for a name that does not exist) or
    ``TransportError`` when the resolver fails.
    """
    return anyio.run(partial(_post, ref, body, dict(headers), allow_private, deadline_s))


async def _post(ref: Ref, body: bytes, headers: dict[str, str], allow_private: bool,
                deadline_s: float) -> Answer:
    answered: list[Answer] = []
    sockets = _Sockets()
    try:
        with anyio.move_on_after(deadline_s):
            addresses = await anyio.to_thread.run_sync(
                resolve_checked, ref.host, ref.port, allow_private, abandon_on_cancel=True)
            await _first_answer(ref, addresses, body, headers, deadline_s, sockets, answered)
    finally:
        await sockets.close_all()
    if answered:  # the deadline may have cut the body short: the status stands
        return answered[0]
    raise Unanswered(f"no answer from {redact(ref.url)} within {deadline_s:g} s",
                     timeout=True)


async def _first_answer(ref: Ref, addresses: list[IPAddress], body: bytes,
                        headers: dict[str, str], deadline_s: float, sockets: _Sockets,
                        answered: list[Answer]) -> None:
    """Try each address in turn until one connects; its answer goes into ``answered``
    as soon as the status line and headers are in (before any body is read)."""
    where = redact(ref.url)
    parts = urlsplit(ref.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = [(k.encode(), v.encode()) for k, v in {
        "Host": _host_header(ref), "User-Agent": "sonic-pipeline",
        "Content-Length": str(len(body)), **headers}.items()]
    # Per-phase limits are a backstop only; the deadline around the call is the bound.
    extensions: dict[str, Any] = {"timeout": dict.fromkeys(
        ("connect", "read", "write", "pool"), deadline_s)}
    if ref.scheme == "https":
        extensions["sni_hostname"] = ref.host
    last = Unanswered(f"cannot connect to {where}", timeout=False)
    async with httpcore.AsyncConnectionPool(
            ssl_context=_tls_context() if ref.scheme == "https" else None,
            max_connections=1, retries=0, network_backend=sockets) as pool:
        for ip in addresses:
            url = httpcore.URL(scheme=ref.scheme, host=str(ip), port=ref.port, target=target)
            try:
                async with pool.stream("POST", url, headers=sent, content=body,
                                       extensions=extensions) as response:
                    answer = Answer(response.status, _header(response.headers, b"retry-after"))
                    answered.append(answer)
                    if not 200 <= answer.status < 300:
                        await _read_some(response, answer.body)
                    return
            except httpcore.ConnectTimeout:
                last = Unanswered(f"cannot connect to {where}", timeout=True)
            except httpcore.ConnectError as exc:
                if _tls_failed(exc):
                    raise Unanswered(f"TLS failed for {where}: certificate or handshake "
                                     "rejected", timeout=False) from None
                last = Unanswered(f"cannot connect to {where}", timeout=False)
            except httpcore.TimeoutException:
                raise Unanswered(f"timed out talking to {where}", timeout=True) from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
                raise Unanswered(f"connection to {where} failed: {type(exc).__name__}",
                                 timeout=False) from None
            # A refused or unreachable address: another address of the same name may answer.
    raise last


async def _read_some(response: httpcore.Response, into: bytearray) -> None:
    """Up to BODY_CAP bytes of the body into ``into`` (kept if the deadline cuts in)."""
    try:
        async for chunk in response.aiter_stream():
            into += chunk[:BODY_CAP - len(into)]
            if len(into) >= BODY_CAP:
                return
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException):
        return  # the status is what counts; a broken body changes nothing


class _Sockets(httpcore.AsyncNetworkBackend):
    """anyio's network backend, remembering every connection so all can be closed."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()
        self._opened: list[httpcore.AsyncNetworkStream] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address,
                                                 socket_options)
        self._opened.append(stream)
        return stream

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("callbacks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)

    async def close_all(self) -> None:
        with anyio.CancelScope(shield=True):
            for stream in self._opened:
                try:
                    await stream.aclose()
                except Exception:  # noqa: BLE001 - already closed or broken: nothing to do
                    pass


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _host_header(ref: Ref) -> str:
    default_port = 443 if ref.scheme == "https" else 80
    host = f"[{ref.host}]" if ":" in ref.host else ref.host
    return host if ref.port == default_port else f"{host}:{ref.port}"


def _tls_context() -> ssl.SSLContext:
    """The system's trust store (``SSL_CERT_FILE`` honoured), hostname checks on."""
    return ssl.create_default_context()


def _tls_failed(exc: BaseException) -> bool:
    """True when an ``ssl.SSLError`` lies in the exception's chain."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
