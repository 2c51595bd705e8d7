"""One call of the remote inference protocol (the README's "Remote engine" section).

    POST {SONIC_REMOTE_URL}/v1/render
    Authorization: Bearer <key>
    Accept: video/mp4, application/x-rgb24
    multipart/form-data:
      image            face.png: the prepared portrait crop (image/png)
      audio            audio.wav: 16 kHz mono s16 (audio/wav)
      min_resolution, inference_steps, dynamic_scale, motion_scale, seed   (decimal text)
      face_box         "x1,y1,x2,y2" in the crop's pixels, when known

    200 video/mp4              the rendered video (the encode stage swaps in the job's audio)
    200 application/x-rgb24    raw RGB frames, one after another; X-Frame-Width and
                               X-Frame-Height give the size, X-Frame-Rate the rate (25)
    429, 5xx (Retry-After)     the key cools down; the job goes on with another key
    401, 403                   the key is disabled
    another 4xx                the request is refused: the job fails (engine.failed)

The multipart body is built once per job, before any key is taken, so a call begins the
moment its slot is granted. The answer is streamed to a file under a byte cap and one
deadline for the whole call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from urllib3 import encode_multipart_formdata

from pipeline.engines.base import RenderRequest
from pipeline.webhooks.delivery import parse_retry_after

from .credentials import Outcome

ACCEPT = "video/mp4, application/x-rgb24"
#: Characters of a refused answer's body kept for the error message.
ERROR_BODY_CHARS = 1024
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Answer:
    """What one call got: ``status`` 0 when there was no answer (``text`` says why)."""

    status: int
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the body of a 2xx answer, on disk
    text: str = ""  # the start of a refused answer's body, or the transport error
    elapsed_s: float = 0.0

    @property
    def outcome(self) -> Outcome:
        if 200 <= self.status < 300:
            return Outcome.OK
        if self.status in (401, 403):
            return Outcome.AUTH
        if self.status == 0 or self.status == 429 or self.status >= 500:
            return Outcome.COOL
        return Outcome.REJECTED

    @property
    def result(self) -> str:
        """The metric label: ok, throttled, server_error, transport, unauthorized, rejected."""
        if self.status == 0:
            return "transport"
        if self.status == 429:
            return "throttled"
        return {Outcome.OK: "ok", Outcome.AUTH: "unauthorized", Outcome.COOL: "server_error",
                Outcome.REJECTED: "rejected"}[self.outcome]

    def retry_after_s(self) -> float:
        return parse_retry_after(self.headers.get("retry-after")) or 0.0


def build_body(job: RenderRequest) -> tuple[bytes, str]:
    """The multipart body of ``job`` and its content type."""
    fields: list[tuple[str, object]] = [
        ("image", ("face.png", job.image_path.read_bytes(), "image/png")),
        ("audio", ("audio.wav", job.audio_path.read_bytes(), "audio/wav")),
        ("min_resolution", str(job.min_resolution)),
        ("inference_steps", str(job.inference_steps)),
        ("dynamic_scale", repr(float(job.dynamic_scale))),
        ("motion_scale", repr(float(job.motion_scale))),
        ("seed", str(job.seed)),
    ]
    if job.face_box is not None:
        fields.append(("face_box", ",".join(str(int(v)) for v in job.face_box)))
    return encode_multipart_formdata(fields)  # type: ignore[arg-type]


def post(session: requests.Session, url: str, key: str, body: bytes, content_type: str,
         dest: Path, timeout_s: float, max_bytes: int) -> Answer:
    """POST one render; a 2xx body goes to ``dest``. Never raises for HTTP or network
    trouble: that is the :class:`Answer`'s status (0: no answer)."""
    started = time.monotonic()
    deadline = started + timeout_s
    headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT,
               "Content-Type": content_type}
    try:
        with session.post(url, data=body, headers=headers, stream=True,
                          timeout=(min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)) as resp:
            kept = {k.lower(): v for k, v in resp.headers.items()}
            kind = kept.get("content-type", "").split(";")[0].strip().lower()
            if not 200 <= resp.status_code < 300:
                text = resp.raw.read(ERROR_BODY_CHARS, decode_content=True) or b""
                return Answer(resp.status_code, kind, kept, None,
                              text.decode("utf-8", "replace"), time.monotonic() - started)
            size = 0
            with open(dest, "wb") as out:
                for chunk in resp.iter_content(1024 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _Abort(f"answer over SONIC_REMOTE_MAX_RESPONSE_BYTES ({max_bytes})")
                    if time.monotonic() > deadline:
                        raise _Abort(f"answer not complete within {timeout_s:.0f} s")
                    out.write(chunk)
            return Answer(resp.status_code, kind, kept, dest, "", time.monotonic() - started)
    except (requests.RequestException, OSError, _Abort) as exc:
        dest.unlink(missing_ok=True)
        what = str(exc) if isinstance(exc, _Abort) else f"{type(exc).__name__}: {exc}"[:300]
        return Answer(0, text=f"no answer from {url}: {what}",
                      elapsed_s=time.monotonic() - started)


class _Abort(Exception):
    """A body given up mid-way (too large, too slow)."""
