"""A static HTTP file server for http(s) inputs, with redirects and lying headers on demand.

    with FileServer() as files:
        files.add("/a.wav", data)                       # 200 with Content-Length
        files.add("/big", data, length=False)           # no Content-Length: body until close
        files.add("/liar", data, declare=10)            # Content-Length: 10 (a lie)
        files.add("/slow", data, trickle=0.05)          # one byte every 50 ms
        files.redirect("/r", "http://elsewhere/x")      # 302
        fetch_input(files.url("/a.wav"), ...)
        files.hosts                                     # Host headers seen
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from .server import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Send a Content-Length header (False: the body ends when the connection closes).
    length: bool = True
    #: Declare this length instead of the real one.
    declare: int | None = None
    #: Seconds between bytes: the body trickles out one byte at a time (None: at once).
    trickle: float | None = None


class _Handler(QuietHandler):
    def do_GET(self) -> None:  # noqa: N802
        owner: FileServer = self.owner()
        owner.hosts.append(self.headers.get("Host", ""))
        route = owner.routes.get(self.path.split("?", 1)[0], Route(b"not found", 404))
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.length:
            declared = route.declare if route.declare is not None else len(route.body)
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client stopped reading (size cap)
            if route.trickle is None:
                self.wfile.write(route.body)
            for i in range(len(route.body) if route.trickle is not None else 0):
                self.wfile.write(route.body[i:i + 1])
                self.wfile.flush()
                time.sleep(route.trickle)
        self.close_connection = True


class FileServer(LoopbackServer):
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(_Handler, tls)
        self.routes: dict[str, Route] = {}
        self.hosts: list[str] = []

    def add(self, path: str, body: bytes, *, status: int = 200, length: bool = True,
            declare: int | None = None, headers: dict[str, str] | None = None,
            trickle: float | None = None) -> str:
        self.routes[path] = Route(body, status, dict(headers or {}), length, declare, trickle)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, b"", status=status, headers={"Location": location})
