"""A test-only engine whose gpu stage takes a fixed time, and the gpu worker that runs it.

The scheduler's end-to-end tests need a gpu stage of known length (a busy gpu, a slot that
frees at a known moment) at no cost in CPU, so that many jobs fit in a few seconds on a
small machine. ``TimedEngine`` holds the stage for ``inference_steps x STEP_S`` seconds
(``config.inference_steps`` 1 ... 100: 0.05 ... 5 s), polling the stage's stop check as a
real engine does between frame batches, then writes Sonic's frame count of grey 64x64
frames for the prepared audio, which the real encode stage turns into a video.

It is never registered in production: this module's ``__main__`` registers it under the
name ``timed`` and then runs ``celery`` with the arguments given, so the worker is the real
gpu worker (same app, hooks, leases, time limits) with one more engine:

    SONIC_DEFAULT_ENGINE=timed python -m tests.e2e.timed_engine -A pipeline worker -Q gpu ...
"""

from __future__ import annotations

import sys
import time
import wave
from typing import Any

from pipeline.engines import ENGINES
from pipeline.engines.base import Engine, Progress, RenderRequest, RenderResult, StopCheck, \
    check_stop
from pipeline.media.frames import FPS, frame_count

#: Seconds of gpu time per inference step.
STEP_S = 0.05
#: Side of the frames written (a multiple of 64, Sonic's rule).
SIDE = 64
NAME = "timed"


def hold_s(inference_steps: int) -> float:
    """Seconds the stage holds the gpu for a job of ``inference_steps``."""
    return inference_steps * STEP_S


class TimedEngine(Engine):
    """Holds the gpu for :func:`hold_s` of the job's steps; grey frames out."""

    name = NAME

    def load(self, settings: Any) -> None:
        """Nothing to load."""

    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        started = time.monotonic()
        end = started + hold_s(job.inference_steps)
        while (left := end - time.monotonic()) > 0:
            check_stop(should_stop)
            on_progress(1.0 - left / max(end - started, 1e-9))
            time.sleep(min(0.1, left))
        with wave.open(str(job.audio_path)) as wav:
            frames = max(1, frame_count(wav.getnframes()))
        job.out_dir.mkdir(parents=True, exist_ok=True)
        path = job.out_dir / "frames.rgb"
        path.write_bytes(bytes([128]) * (SIDE * SIDE * 3 * frames))
        on_progress(1.0)
        return RenderResult(engine=self.name, width=SIDE, height=SIDE, frames=frames, fps=FPS,
                            frames_path=path, elapsed_s=time.monotonic() - started)


def main() -> None:
    """``celery ARGS...`` with the ``timed`` engine registered (before the worker forks)."""
    from celery.bin.celery import main as celery_main

    ENGINES[NAME] = "tests.e2e.timed_engine:TimedEngine"
    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
