"""The built-in torch engine: audio-driven jaw, lips and head motion on CPU or CUDA.

Same inputs, knobs and frame/size rules as Sonic, no weights to install. Frames are
rendered ``engine_batch_frames`` at a time and streamed out (to a raw RGB file, or to a
caller), so memory stays bounded whatever the audio length.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engines.base import Engine, Progress, RenderRequest, RenderResult, StopCheck
from pipeline.engines.base import check_stop
from pipeline.errors import EngineError, OutOfMemory
from pipeline.faults import describe, is_out_of_memory
from pipeline.media.frames import FPS, output_size
from pipeline.media.handoff import FrameWriter

if TYPE_CHECKING:
    import torch

#: Face box (x1, y1, x2, y2) in pixels.
Box = tuple[int, int, int, int]

#: Raw frames file the encode stage reads (rgb24, frame after frame).
FRAMES_FILE = "frames.rgb"


def resolve_device(wanted: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is unavailable."""
    import torch

    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {wanted!r} requested but CUDA is not available",
                          code="engine.unavailable")
    try:
        return torch.device(wanted)
    except RuntimeError as exc:
        raise EngineError(f"bad device {wanted!r}: {exc}", code="engine.unavailable") from None


class BuiltinEngine(Engine):
    name = "builtin"

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self.batch_frames = 16

    def load(self, settings: Any) -> None:
        import torch

        self.device = resolve_device(str(settings.device))
        batch = int(settings.engine_batch_frames)
        self.batch_frames = batch if batch > 0 else (16 if self.device.type == "cuda" else 4)
        torch.zeros(1, device=self.device)  # create the CUDA context now, not mid-job

    def _inputs(self, job: RenderRequest) -> tuple[np.ndarray, Box, np.ndarray]:
        import cv2

        from pipeline.media.audio import load_wav
        from pipeline.media.image import decode_image, detect_face

        rgb = decode_image(job.image_path)
        height, width = rgb.shape[:2]
        out_w, out_h = output_size(width, height, job.min_resolution)
        face = job.face_box
        if (out_w, out_h) != (width, height):
            rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
            if face is not None:
                sx, sy = out_w / width, out_h / height
                face = (round(face[0] * sx), round(face[1] * sy),
                        round(face[2] * sx), round(face[3] * sy))
        if face is None:
            # The preprocess crop is centred on the face; fall back to that layout.
            face = detect_face(rgb) or (out_w // 4, out_h // 4, out_w * 3 // 4, out_h * 3 // 4)
        return rgb, face, load_wav(job.audio_path)

    def frames(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> Generator[np.ndarray, None, None]:
        """The job's frames as uint8 (B, H, W, 3) batches; progress after each batch."""
        import torch

        from pipeline.engines.motion import controls
        from pipeline.engines.warp import FaceWarp

        if self.device is None:
            raise EngineError("engine used before load()", code="engine.unavailable")
        check_stop(should_stop)
        rgb, face, samples = self._inputs(job)
        with torch.inference_mode():  # entered per step: never held across a yield
            ctl = controls(samples, dynamic_scale=job.dynamic_scale,
                           motion_scale=job.motion_scale, steps=job.inference_steps,
                           seed=job.seed)
            warp = FaceWarp(rgb, face, self.device)
        total = ctl.frames
        on_progress(0.0)
        for start in range(0, total, self.batch_frames):
            check_stop(should_stop)
            stop = min(start + self.batch_frames, total)
            with torch.inference_mode():
                batch = warp.render(ctl, start, stop).cpu().numpy()
            yield batch
            on_progress(stop / total)

    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        """Write the frames to ``out_dir/frames.rgb``, or ``frames.mkv`` for the lossless
        ``h264`` hand-off (``job.handoff``), renamed into place when complete."""
        started = time.monotonic()
        job.out_dir.mkdir(parents=True, exist_ok=True)
        writer = FrameWriter(job.out_dir, fps=FPS, fmt=job.handoff)
        count, shape = 0, (0, 0)
        try:
            for batch in self.frames(job, on_progress, should_stop):
                writer.write(batch)
                count, shape = count + len(batch), batch.shape[1:3]
            path = writer.finish()
        except (RuntimeError, ValueError) as exc:  # torch errors, out of memory included
            writer.abort()
            if is_out_of_memory(exc):
                raise OutOfMemory(f"builtin engine on {self.device}: {describe(exc)} "
                                  "(lower min_resolution or SONIC_ENGINE_BATCH_FRAMES)",
                                  exception=type(exc).__name__) from exc
            raise EngineError(f"builtin engine failed: {exc}", code="engine.failed") from exc
        except BaseException:
            writer.abort()
            raise
        return RenderResult(engine=self.name, width=int(shape[1]), height=int(shape[0]),
                            frames=count, fps=FPS, frames_path=path,
                            elapsed_s=time.monotonic() - started, device=str(self.device))
