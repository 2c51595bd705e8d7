"""A raw TCP server that answers HTTP badly on purpose: slowly, a byte at a time, or never.

    with TrickleServer("slow_headers", interval=0.1) as server:
        deliver(server.url("/hook"), ...)      # must give up on its own deadline
        server.closed_after()                  # seconds until the client hung up, per connection

Shapes (each runs at most ``limit`` seconds per connection, then closes):

    silent        accept, read the request, never answer
    deaf          accept and never read the request nor answer
    slow_status   the status line itself, a byte per ``interval``
    slow_headers  "HTTP/1.1 200 OK" then endless header bytes, one per ``interval``
    slow_body     200 with a large Content-Length, then a byte per ``interval``
    endless_body  200, chunked, an endless stream of chunks as fast as the client reads
    error_slow_body  503 with a large Content-Length, then a byte per ``interval``
    tls_silent    like ``silent`` on an https URL: the TLS handshake never completes
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from types import TracebackType
from typing import Self

SHAPES = ("silent", "deaf", "slow_status", "slow_headers", "slow_body", "endless_body",
          "error_slow_body", "tls_silent")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: TrickleServer


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        owner = self.server.owner  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        opened = time.monotonic()
        owner.opened.append(opened)
        index = len(owner.opened) - 1
        try:
            if owner.shape not in ("deaf", "tls_silent"):
                _read_request(sock)
            hung_up = getattr(self, owner.shape if owner.shape != "tls_silent" else "silent")(
                sock, owner)
        except OSError:
            hung_up = True
        owner.closed[index] = time.monotonic() - opened if hung_up else None

    # Each returns True when the client hung up, False when the server gave up first.
    def silent(self, sock: socket.socket, owner: TrickleServer) -> bool:
        return _wait_for_hangup(sock, owner)

    def deaf(self, sock: socket.socket, owner: TrickleServer) -> bool:
        return _wait_for_hangup(sock, owner)

    def slow_status(self, sock: socket.socket, owner: TrickleServer) -> bool:
        return _trickle(sock, owner, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: a\r\n" * 10_000)

    def slow_headers(self, sock: socket.socket, owner: TrickleServer) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        return _trickle(sock, owner, b"X-Slow: a\r\n" * 10_000)

    def slow_body(self, sock: socket.socket, owner: TrickleServer) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        return _trickle(sock, owner, b"x" * 100_000)

    def error_slow_body(self, sock: socket.socket, owner: TrickleServer) -> bool:
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100000\r\n\r\n")
        return _trickle(sock, owner, b"busy, try later " * 6250)

    def endless_body(self, sock: socket.socket, owner: TrickleServer) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
        sock.settimeout(0.2)
        started = time.monotonic()
        while not owner.stopping.is_set() and time.monotonic() - started < owner.limit:
            try:
                sock.sendall(chunk)
            except TimeoutError:
                continue  # the client is not reading: keep the connection, try again
            except OSError:
                return True
        return False


def _read_request(sock: socket.socket) -> None:
    """Read the request head and its Content-Length body."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return
        body += chunk


def _wait_for_hangup(sock: socket.socket, owner: TrickleServer) -> bool:
    sock.settimeout(0.05)
    started = time.monotonic()
    while not owner.stopping.is_set() and time.monotonic() - started < owner.limit:
        try:
            if not sock.recv(65536):  # the client closed its end
                return True
        except TimeoutError:
            continue
    return False


def _trickle(sock: socket.socket, owner: TrickleServer, data: bytes) -> bool:
    started = time.monotonic()
    for i in range(len(data)):
        if owner.stopping.wait(owner.interval) or time.monotonic() - started > owner.limit:
            return False
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return True
    return False


class TrickleServer:
    """Serve one misbehaving ``shape`` on 127.0.0.1:<free port> until stopped."""

    def __init__(self, shape: str, interval: float = 0.1, limit: float = 30.0) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}")
        self.shape, self.interval, self.limit = shape, interval, limit
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.port = int(self.httpd.server_address[1])
        self.stopping = threading.Event()
        #: Monotonic time each connection was accepted.
        self.opened: list[float] = []
        #: Per connection: seconds until the client hung up, or None if it never did.
        self.closed: dict[int, float | None] = {}
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.shape == "tls_silent" else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def wait_hangups(self, count: int, timeout: float = 5.0) -> dict[int, float | None]:
        """Wait until ``count`` connections have ended; their hang-up times."""
        deadline = time.monotonic() + timeout
        while len(self.closed) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return dict(self.closed)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
