"""encode (cpu): frames + the user's audio -> H.264/AAC MP4 (+faststart) and a poster.

The video carries the audio preprocess kept at the user's own rate and channels
(``audio.flac``), not the 16 kHz mono copy the engine analysed; a work dir prepared
before that copy existed falls back to ``audio.wav``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.engines import RenderResult
from pipeline.media.encode import encode_video, make_poster, replace_audio
from pipeline.media.ffmpeg import FFmpeg
from pipeline.stages.artifacts import read_json, write_json
from pipeline.stages.runner import StageContext


def soundtrack(workdir: Path, audio: dict[str, Any]) -> Path:
    """The audio file the video carries: the kept copy when present, else the 16 kHz WAV."""
    original = audio.get("original") or {}
    if original.get("path"):
        kept = workdir / Path(original["path"]).name
        if kept.is_file():
            return kept
    return workdir / "audio.wav"


def run(ctx: StageContext) -> dict[str, Any]:
    render = RenderResult.from_dict(read_json(ctx.workdir / "render.json"))
    audio = read_json(ctx.workdir / "prepared.json")["audio"]
    track = soundtrack(ctx.workdir, audio)
    ff = FFmpeg.from_settings(ctx.settings)
    video = ctx.workdir / "video.mp4"
    if render.video_path is not None:
        # The engine muxed its own video (Sonic): keep its frames, swap in the user's audio.
        replace_audio(render.video_path, track, video, ff=ff)
        info: dict[str, Any] = {"remuxed": True}
    else:
        encoded = encode_video(render.frames_path, track, video,
                               size=(render.width, render.height), fps=render.fps,
                               crf=ctx.settings.crf, ff=ff,
                               seconds=float(audio.get("duration_s") or 0) or None)
        info = {"frames": encoded.frames, "duration_s": encoded.duration_s,
                "size_bytes": encoded.size_bytes, "elapsed_s": encoded.elapsed_s}
    info["audio"] = track.name
    make_poster(video, ctx.workdir / "poster.jpg", ff=ff)
    write_json(ctx.workdir / "encode.json", info)
    return {"progress": 95.0}
