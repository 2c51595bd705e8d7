"""encode (cpu): frames + original audio -> H.264/AAC MP4 (+faststart) and a poster."""

from __future__ import annotations

from typing import Any

from pipeline.engines import RenderResult
from pipeline.media.encode import encode_video, make_poster, remux_faststart
from pipeline.media.ffmpeg import FFmpeg
from pipeline.stages.artifacts import read_json, write_json
from pipeline.stages.runner import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    render = RenderResult.from_dict(read_json(ctx.workdir / "render.json"))
    ff = FFmpeg.from_settings(ctx.settings)
    video = ctx.workdir / "video.mp4"
    if render.video_path is not None:
        # The engine muxed its own video (Sonic): copy it with the index up front.
        remux_faststart(render.video_path, video, ff=ff)
        info: dict[str, Any] = {"remuxed": True}
    else:
        encoded = encode_video(render.frames_path, ctx.workdir / "audio.wav", video,
                               size=(render.width, render.height), fps=render.fps,
                               crf=ctx.settings.crf, ff=ff)
        info = {"frames": encoded.frames, "duration_s": encoded.duration_s,
                "size_bytes": encoded.size_bytes, "elapsed_s": encoded.elapsed_s}
    make_poster(video, ctx.workdir / "poster.jpg", ff=ff)
    write_json(ctx.workdir / "encode.json", info)
    return {"progress": 95.0}
