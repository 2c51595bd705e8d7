"""The one engine interface and its request/result types (Sonic's frame and size rules
are :mod:`pipeline.media.frames`).

No torch here: the bridge and the cpu workers import this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import Cancelled
from pipeline.media.frames import FPS

#: Called with the fraction done, 0.0 to 1.0, never decreasing.
Progress = Callable[[float], None]
#: Polled between frame batches: False to go on; True, "task.cancelled" or
#: "task.deadline" to stop (a string picks the code of the raised :class:`Cancelled`).
StopCheck = Callable[[], "bool | str | None"]


def check_stop(should_stop: StopCheck) -> None:
    """Raise :class:`Cancelled` when ``should_stop()`` asks to stop."""
    verdict = should_stop()
    if verdict:
        code = verdict if verdict in ("task.cancelled", "task.deadline") else "task.cancelled"
        reason = "deadline passed" if code == "task.deadline" else "cancelled"
        raise Cancelled(f"render stopped: {reason}", code=code)


@dataclass(frozen=True)
class RenderRequest:
    """What the gpu stage renders: prepared inputs, where to write, and the job's knobs."""

    image_path: Path  # the cropped portrait (PNG) from the preprocess stage
    audio_path: Path  # 16 kHz mono s16 WAV from the preprocess stage
    out_dir: Path
    min_resolution: int = 512
    inference_steps: int = 25
    dynamic_scale: float = 1.0
    motion_scale: float = 1.0
    seed: int = 0
    #: The face in the prepared image's pixels (x1, y1, x2, y2), when the caller knows it.
    face_box: tuple[int, int, int, int] | None = None
    #: How an engine that writes frames hands them to the encode stage
    #: (:mod:`pipeline.media.handoff`: ``raw`` rgb24, or lossless ``h264``; the gpu stage
    #: passes ``SONIC_HANDOFF``).
    handoff: str = "raw"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("image_path", "audio_path", "out_dir"):
            data[key] = str(data[key])
        data["face_box"] = list(self.face_box) if self.face_box else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderRequest:
        """Build from a task payload; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        for key in ("image_path", "audio_path", "out_dir"):
            values[key] = Path(values[key])
        if "face_box" in values:
            values["face_box"] = tuple(int(v) for v in values["face_box"])
        return cls(**values)


@dataclass(frozen=True)
class RenderResult:
    """What an engine wrote: raw RGB frames to encode, or a finished MP4 (Sonic)."""

    engine: str
    width: int
    height: int
    frames: int
    fps: int = FPS
    frames_path: Path | None = None  # rgb24, frames * height * width * 3 bytes
    video_path: Path | None = None  # already muxed with the audio
    elapsed_s: float = 0.0
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("frames_path", "video_path"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("frames_path", "video_path"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


class Engine(ABC):
    """An audio-driven portrait renderer. ``load`` runs once per process (weights stay
    warm); ``render`` may run many times, one job at a time."""

    name: ClassVar[str]

    @abstractmethod
    def load(self, settings: Any) -> None:
        """Load code and weights; raise ``EngineError('engine.unavailable')`` if missing."""

    @abstractmethod
    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        """Render ``job``; report progress and poll ``should_stop`` between frame batches."""
