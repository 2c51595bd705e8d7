"""inference (gpu): render the prepared portrait with the job's engine (kept warm)."""

from __future__ import annotations

from typing import Any

from pipeline.engines import RenderRequest, get_engine
from pipeline.stages.artifacts import job_config, read_json, write_json
from pipeline.stages.runner import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    prepared = read_json(ctx.workdir / "prepared.json")
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
    )
    request.out_dir.mkdir(exist_ok=True)
    engine = get_engine(ctx.task.get("engine"), ctx.settings)
    # Engine progress (0..1) maps onto 10..90 % of the job.
    result = engine.render(request, lambda done: ctx.progress(10 + 80 * done), ctx.should_stop)
    write_json(ctx.workdir / "render.json", result.as_dict())
    return {"progress": 90.0}
