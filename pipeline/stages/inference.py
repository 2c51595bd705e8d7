"""inference (gpu): render the prepared portrait with the job's engine (kept warm).

The render runs under a time budget that scales with the audio's length
(:func:`gpu_budget_s`); the runner's watchdog stops it past the budget (``stage.timeout``).
"""

from __future__ import annotations

from typing import Any

from pipeline.engines import RenderRequest, get_engine
from pipeline.settings import Settings
from pipeline.stages.artifacts import job_config, read_json, write_json
from pipeline.stages.runner import StageContext


def gpu_budget_s(settings: Settings, audio_s: float) -> float:
    """Seconds the gpu stage may take for ``audio_s`` seconds of audio:
    ``SONIC_GPU_BUDGET_BASE_S + SONIC_GPU_BUDGET_PER_AUDIO_S * audio_s``, at most
    ``SONIC_GPU_TIME_LIMIT_S``."""
    budget = settings.gpu_budget_base_s + settings.gpu_budget_per_audio_s * max(0.0, audio_s)
    return min(budget, float(settings.gpu_time_limit_s))


def run(ctx: StageContext) -> dict[str, Any]:
    prepared = read_json(ctx.workdir / "prepared.json")
    ctx.limit_time(gpu_budget_s(ctx.settings, float(prepared["audio"]["duration_s"])))
    config = job_config(ctx.task)
    image = prepared["image"]
    request = RenderRequest(
        image_path=ctx.workdir / "face.png",
        audio_path=ctx.workdir / "audio.wav",
        out_dir=ctx.workdir / "render",
        min_resolution=min(image["size"]),
        inference_steps=int(config.get("inference_steps") or 25),
        dynamic_scale=float(config.get("dynamic_scale") or 1.0),
        motion_scale=float(config.get("motion_scale") or 1.0),
        seed=int(config.get("seed") or 0),
        face_box=tuple(image["face_in_crop"]),
        handoff=ctx.settings.handoff,
    )
    request.out_dir.mkdir(exist_ok=True)
    engine = get_engine(ctx.task.get("engine"), ctx.settings)
    # Engine progress (0..1) maps onto 10..90 % of the job.
    result = engine.render(request, lambda done: ctx.progress(10 + 80 * done), ctx.should_stop)
    write_json(ctx.workdir / "render.json", result.as_dict())
    return {"progress": 90.0}
