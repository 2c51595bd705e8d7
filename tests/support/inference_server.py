"""A real HTTP inference service for the remote engine's tests: the README's protocol, per-key
rate limits enforced on arrival, and 429 / 503 / 401 answers on cue.

    with InferenceServer({"key-a": [(2, 1.0)], "key-b": [(2, 1.0)]}) as server:
        server.cue("key-a", 429, retry_after="2")     # key-a's next request gets a 429
        server.deny("key-b", 401)                      # key-b is refused from now on
        ... SONIC_REMOTE_URL=server.url ...
        server.arrivals("key-a")                       # when key-a's requests came in

A request over a key's limit (more than N arrivals in any window) is answered 429 and
counted in ``over_limit``: a well-behaved pool never causes one. A successful render is
raw RGB frames (or an MP4 with ``mp4=True``): the posted portrait, darkened a little per
frame and shifted by the seed, 25 fps, as many frames as Sonic's rule gives the audio.
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
import wave
from collections import defaultdict
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.media.frames import frame_count
from tests.support.server import LoopbackServer, QuietHandler

#: Seconds of arrival-time jitter a key's window forgives (at most a tenth of it): the
#: server stamps a request when its handler runs, not when the client's limiter let it go.
ARRIVAL_JITTER_S = 0.15


@dataclass
class Call:
    key: str
    at: float  # time.time() of arrival
    status: int
    fields: dict[str, str]


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """``{field name: bytes}`` of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


def render_frames(image_png: bytes, audio_wav: bytes, seed: int) -> tuple[np.ndarray, int]:
    """The service's "render": (frames (N, H, W, 3) uint8, N)."""
    import cv2

    rgb = cv2.imdecode(np.frombuffer(image_png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    with wave.open(io.BytesIO(audio_wav)) as wav:
        samples = wav.getnframes()
    n = max(1, frame_count(samples))
    ramp = (np.arange(n, dtype=np.int32) * 3 + seed) % 64
    frames = np.clip(rgb[None].astype(np.int32) - ramp[:, None, None, None], 0, 255)
    return frames.astype(np.uint8), n


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        server: InferenceServer = self.owner()
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization", "")
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        status, headers = server.admit(key, arrived)
        if self.path != "/v1/render":
            status, headers = 404, {}
        fields: dict[str, bytes] = {}
        if status == 200:
            fields = parse_multipart(self.headers["Content-Type"], body)
            if server.delay_s:
                time.sleep(server.delay_s)
        server.record(Call(key, arrived, status, {k: v.decode() for k, v in fields.items()
                                                  if k not in ("image", "audio")}))
        if status != 200:
            self._send(status, b'{"error": "refused"}', "application/json", headers)
            return
        frames, n = render_frames(fields["image"], fields["audio"], int(fields["seed"]))
        height, width = frames.shape[1:3]
        if server.mp4:
            self._send(200, _mp4(frames), "video/mp4", {})
        else:
            self._send(200, frames.tobytes(), server.frames_type,
                       {"X-Frame-Width": str(width), "X-Frame-Height": str(height),
                        "X-Frame-Rate": "25"})

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _mp4(frames: np.ndarray) -> bytes:
    height, width = frames.shape[1:3]
    out = subprocess.run(["ffmpeg", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-s", f"{width}x{height}", "-r", "25", "-i", "-", "-c:v", "libx264",
                          "-pix_fmt", "yuv420p", "-movflags", "frag_keyframe+empty_moov",
                          "-f", "mp4", "-"], input=frames.tobytes(), capture_output=True,
                         check=True)
    return out.stdout


class InferenceServer(LoopbackServer):
    """``limits``: key -> [(amount, window_s), ...]; other keys get 401."""

    def __init__(self, limits: dict[str, list[tuple[int, float]]], *, delay_s: float = 0.05,
                 mp4: bool = False) -> None:
        super().__init__(_Handler)
        self.limits = dict(limits)
        self.delay_s, self.mp4 = delay_s, mp4
        self.frames_type = "application/x-rgb24"
        self.calls: list[Call] = []
        self.over_limit: list[tuple[str, float]] = []
        self._cues: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
        self._denied: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self.url("").rstrip("/")

    def cue(self, key: str, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """The next ``times`` requests with ``key`` get ``status`` (with ``Retry-After``)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._cues[key] += [(status, headers)] * times

    def deny(self, key: str, status: int = 401) -> None:
        """Every later request with ``key`` gets ``status`` (401 or 403)."""
        with self._lock:
            self._denied[key] = status

    def admit(self, key: str, arrived: float) -> tuple[int, dict[str, str]]:
        """The status a request of ``key`` arriving at ``arrived`` gets (limits counted)."""
        with self._lock:
            if key not in self.limits or key in self._denied:
                return self._denied.get(key, 401), {}
            past = [c.at for c in self.calls if c.key == key]
            for amount, window in self.limits[key]:
                # Arrival times carry the transit's jitter (two requests the client let
                # through a window apart can arrive a little closer on a loaded machine).
                span = window - min(ARRIVAL_JITTER_S, window / 10)
                if sum(1 for t in past if arrived - t < span) >= amount:
                    self.over_limit.append((key, arrived))
                    return 429, {"Retry-After": str(int(window))}
            if self._cues[key]:
                return self._cues[key].pop(0)
            return 200, {}

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def arrivals(self, key: str, status: int | None = None) -> list[float]:
        with self._lock:
            return [c.at for c in self.calls
                    if c.key == key and (status is None or c.status == status)]

    def most_in_window(self, key: str, window_s: float) -> int:
        """The most requests of ``key`` that arrived within any ``window_s``."""
        times = sorted(self.arrivals(key))
        most, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            most = max(most, end - start + 1)
        return most


def write_inputs(directory: Path, seconds: float = 1.0, size: int = 64) -> tuple[Path, Path]:
    """A prepared portrait (PNG) and 16 kHz mono audio, as the preprocess stage leaves them."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    image = directory / "face.png"
    cv2.imwrite(str(image), rng.integers(64, 255, (size, size, 3), dtype=np.uint8))
    audio = directory / "audio.wav"
    samples = (np.sin(np.arange(int(16000 * seconds)) * 0.05) * 8000).astype("<i2")
    with wave.open(str(audio), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return image, audio


__all__: list[Any] = ["Call", "InferenceServer", "parse_multipart", "render_frames",
                      "write_inputs"]
