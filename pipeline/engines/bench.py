"""The ``bench`` engine: a stand-in for the model in benchmarks, never for jobs.

Registered only when ``SONIC_BENCH_ENGINE`` is on (:data:`pipeline.engines.BENCH_ENGINES`):
otherwise a job naming it fails with ``engine.unavailable`` like any unknown engine. It
renders nothing: it holds the stage for ``SONIC_BENCH_ENGINE_SLEEP_S`` seconds plus
``SONIC_BENCH_ENGINE_STEP_S`` x the job's ``inference_steps`` (both 0: returns at once),
polling the stop check as a real engine does between batches, and hands over one black
64x64 frame, which the real encode stage holds for the audio's length. So the
orchestration around the gpu stage (queues, leases, the other stages) is what a benchmark
measures, or a gpu stage of a known length that each job chooses (the scheduler's
end-to-end tests: a busy gpu, a slot that frees at a known moment, at no cost in CPU).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.engines.base import Engine, Progress, RenderRequest, RenderResult, StopCheck
from pipeline.engines.base import check_stop
from pipeline.media.frames import FPS
from pipeline.media.handoff import FrameWriter

#: Side of the one frame handed over (a multiple of 64, Sonic's rule).
SIDE = 64
#: Longest sleep between two stop checks, seconds.
POLL_S = 0.05


class BenchEngine(Engine):
    name = "bench"

    def __init__(self) -> None:
        self.sleep_s = 0.0
        self.step_s = 0.0

    def load(self, settings: Any) -> None:
        self.sleep_s = float(settings.bench_engine_sleep_s)
        self.step_s = float(settings.bench_engine_step_s)

    def hold_s(self, inference_steps: int) -> float:
        """Seconds the stage holds the gpu for a job of ``inference_steps``."""
        return self.sleep_s + self.step_s * inference_steps

    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        """Hold for :meth:`hold_s`, then write one black frame (raw: no encoder to start)."""
        started = time.monotonic()
        end = started + self.hold_s(job.inference_steps)
        while (left := end - time.monotonic()) > 0:
            check_stop(should_stop)
            time.sleep(min(POLL_S, left))
        check_stop(should_stop)
        writer = FrameWriter(job.out_dir, fps=FPS, fmt="raw")
        writer.write(np.zeros((1, SIDE, SIDE, 3), np.uint8))
        path = writer.finish()
        on_progress(1.0)
        return RenderResult(engine=self.name, width=SIDE, height=SIDE, frames=1, fps=FPS,
                            frames_path=path, elapsed_s=time.monotonic() - started)
