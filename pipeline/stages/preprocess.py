"""preprocess (cpu): fetch the inputs, decode the audio to 16 kHz, find and crop the face."""

from __future__ import annotations

from typing import Any

from pipeline.inputs import fetch_input
from pipeline.media.audio import prepare_audio
from pipeline.media.ffmpeg import FFmpeg
from pipeline.media.image import prepare_image
from pipeline.stages.artifacts import job_config, write_json
from pipeline.stages.runner import StageContext

DEFAULT_MIN_RESOLUTION = 512
DEFAULT_EXPAND_RATIO = 0.5


def run(ctx: StageContext) -> dict[str, Any]:
    payload = ctx.task["payload"]
    config = job_config(ctx.task)
    inputs = ctx.workdir / "inputs"
    inputs.mkdir(exist_ok=True)
    image = fetch_input(payload["image_url"], inputs, ctx.settings)
    audio = fetch_input(payload["audio_url"], inputs, ctx.settings)
    ctx.should_stop()
    info = prepare_audio(audio, ctx.workdir / "audio.wav", ctx.settings.max_audio_s,
                         ff=FFmpeg.from_settings(ctx.settings))
    crop = prepare_image(
        image, ctx.workdir / "face.png",
        min_resolution=int(config.get("min_resolution") or DEFAULT_MIN_RESOLUTION),
        expand_ratio=float(config.get("expand_ratio", DEFAULT_EXPAND_RATIO)),
    )
    write_json(ctx.workdir / "prepared.json", {
        "audio": info.as_dict(), "image": crop.as_dict(),
        "duration_hint_s": payload.get("duration"),
    })
    ctx.progress(5)
    return {}
