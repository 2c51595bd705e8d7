"""A callback receiver that verifies Standard Webhooks signatures and answers from a script.

    with CallbackReceiver(secret, script=[Reply(503), Reply(503)]) as receiver:
        ...  # third and later requests get 200
        receiver.requests[0].verified
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.webhooks import SignatureError, verify

from .server import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (longer than the client's timeout: a timeout).
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any | None
    #: None when the signature verified, else why it did not.
    error: str | None

    @property
    def verified(self) -> bool:
        return self.error is None


class SignedHandler(QuietHandler):
    """Reads a callback request and checks its signature against the owner's secret."""

    def read_signed(self) -> Received:
        """The request as :class:`Received` (``error``: why its signature failed)."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload, error = verify(self.owner().secret, headers, body), None
        except (SignatureError, ValueError) as exc:
            payload, error = None, str(exc)
        return Received(self.path, headers, body, payload, error)


class _Handler(SignedHandler):
    def do_POST(self) -> None:  # noqa: N802
        owner: CallbackReceiver = self.owner()
        reply = owner.record(self.read_signed())
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the client gave up (timeout test)


class CallbackReceiver(LoopbackServer):
    def __init__(self, secret: str, script: list[Reply] | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(_Handler, tls)
        self.secret = secret
        self.script = list(script or [])
        self.requests: list[Received] = []
        self._lock = threading.Lock()

    def record(self, received: Received) -> Reply:
        """Keep the request; the next scripted reply, or 200 once the script is spent."""
        with self._lock:
            self.requests.append(received)
            return self.script.pop(0) if self.script else Reply(200)
