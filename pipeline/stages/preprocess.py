"""preprocess (cpu): fetch the inputs, decode the audio once (16 kHz mono for the engines,
the user's own audio for the video), find and crop the face."""

from __future__ import annotations

from typing import Any

from pipeline.inputs import fetch_input, role_path
from pipeline.media.audio import prepare_audio
from pipeline.media.ffmpeg import FFmpeg
from pipeline.media.image import prepare_image
from pipeline.stages.artifacts import job_config, write_json
from pipeline.stages.runner import StageContext

DEFAULT_MIN_RESOLUTION = 512
DEFAULT_EXPAND_RATIO = 0.5
#: The user's audio as the video will carry it (FLAC: lossless, any rate and channels).
KEPT_AUDIO = "audio.flac"


def run(ctx: StageContext) -> dict[str, Any]:
    payload = ctx.task["payload"]
    config = job_config(ctx.task)
    inputs = ctx.workdir / "inputs"
    inputs.mkdir(exist_ok=True)
    image_url, audio_url = payload["image_url"], payload["audio_url"]
    image = fetch_input(image_url, role_path(inputs, "image", image_url), ctx.settings)
    audio = fetch_input(audio_url, role_path(inputs, "audio", audio_url), ctx.settings)
    ctx.should_stop()
    info = prepare_audio(audio, ctx.workdir / "audio.wav", ctx.settings.max_audio_s,
                         keep=ctx.workdir / KEPT_AUDIO, ff=FFmpeg.from_settings(ctx.settings))
    crop = prepare_image(
        image, ctx.workdir / "face.png",
        min_resolution=int(config.get("min_resolution") or DEFAULT_MIN_RESOLUTION),
        expand_ratio=float(config.get("expand_ratio", DEFAULT_EXPAND_RATIO)),
        max_pixels=ctx.settings.max_image_pixels,
    )
    write_json(ctx.workdir / "prepared.json", {
        "audio": info.as_dict(), "image": crop.as_dict(),
        "duration_hint_s": payload.get("duration"),
    })
    ctx.progress(5)
    return {}
