"""Benchmark: built-in engine frames/s at 512x512 and encode speed, each against a naive
baseline measured in the same run; and the gpu -> encode hand-off. Not a pytest test;
run it directly:

    .venv/bin/python tests/bench/bench_engine.py [--seconds 8] [--json out.json]

Engine baseline: one frame per step (no batching). Encode baseline: every frame written
as a PNG, then ffmpeg reads the PNGs (an encode to images and a second encode to H.264).
Hand-off (pipeline/media/handoff.py): the engine's render as the gpu stage runs it, with
raw rgb24 frames (before) and lossless H.264 (after): the gpu stage's time, bytes written
per second of video, the encode stage's time from that file, and whether the final videos
are byte for byte the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.engines.base import RenderRequest  # noqa: E402
from pipeline.engines.builtin import BuiltinEngine  # noqa: E402
from pipeline.media.audio import prepare_audio  # noqa: E402
from pipeline.media.encode import encode_video  # noqa: E402
from pipeline.media.ffmpeg import run_ffmpeg  # noqa: E402
from pipeline.media.frames import FPS  # noqa: E402
from pipeline.media.image import prepare_image  # noqa: E402
from pipeline.settings import load  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. A talking portrait needs its jaw, "
        "lips and head to follow the voice, frame after frame, at twenty five frames a second.")


def _inputs(work: Path, seconds: float) -> tuple[Path, Path]:
    raw = work / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), TEXT], check=True, capture_output=True)
    audio = prepare_audio(raw, work / "speech16k.wav", max_s=600).path
    clipped = work / "clip.wav"
    run_ffmpeg(["-i", audio, "-t", f"{seconds:.2f}", "-c:a", "pcm_s16le", "-y", clipped])
    crop = prepare_image(ROOT / "tests/data/astronaut.jpg", work / "crop.png", min_resolution=512)
    assert crop.path is not None
    return crop.path, clipped


def _engine_fps(device: str, batch: int, job: RenderRequest, repeat: int) -> tuple[float, int]:
    """Median frames/s over ``repeat`` renders (frames copied to host memory, as in use)."""
    engine = BuiltinEngine()
    engine.load(load(device=device, engine_batch_frames=batch))
    warm_up = engine.frames(job, lambda _: None, lambda: False)
    next(warm_up)  # first batch only: allocator and thread pool warm
    warm_up.close()
    rates, frames = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        frames = sum(len(b) for b in engine.frames(job, lambda _: None, lambda: False))
        rates.append(frames / (time.perf_counter() - started))
    return statistics.median(rates), frames


def _timed(func: Any, *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - started


def _encode_naive(frames: np.ndarray, audio: Path, out: Path, work: Path) -> float:
    import cv2

    started = time.perf_counter()
    pngs = work / "png"
    pngs.mkdir(exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(pngs / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    run_ffmpeg(["-framerate", "25", "-i", pngs / "%06d.png", "-i", audio, "-c:v", "libx264",
                "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                "-movflags", "+faststart", "-y", out])
    return time.perf_counter() - started


def _handoff(device: str, job: RenderRequest, audio_s: float, work: Path,
             repeat: int) -> dict[str, Any]:
    """The gpu stage's render and the encode stage, raw frames against the h264 hand-off."""
    from dataclasses import replace

    engine = BuiltinEngine()
    engine.load(load(device=device))
    out: dict[str, Any] = {}
    for fmt in ("raw", "h264"):
        request = replace(job, out_dir=work / f"handoff-{fmt}", handoff=fmt)
        took = []
        for _ in range(repeat):
            started = time.perf_counter()
            result = engine.render(request, lambda _: None, lambda: False)
            took.append(time.perf_counter() - started)
        assert result.frames_path is not None
        video = work / f"handoff-{fmt}.mp4"
        encode_s = statistics.median(
            _timed(encode_video, result.frames_path, job.audio_path, video,
                   size=(result.width, result.height), seconds=audio_s)
            for _ in range(repeat))
        size = result.frames_path.stat().st_size
        out[fmt] = {"gpu_stage_s": statistics.median(took), "frames": result.frames,
                    "bytes": size, "bytes_per_video_s": size / (result.frames / FPS),
                    "encode_s": encode_s,
                    "md5": hashlib.md5(video.read_bytes()).hexdigest()}
    raw, h264 = out["raw"], out["h264"]
    out.update({"device": device, "cut": raw["bytes"] / h264["bytes"],
                "gpu_stage_ratio": h264["gpu_stage_s"] / raw["gpu_stage_s"],
                "identical_video": raw["md5"] == h264["md5"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio length to render")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import torch

    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image, audio = _inputs(work, args.seconds)
        job = RenderRequest(image, audio, work / "out", min_resolution=512, seed=1)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            naive, n = _engine_fps(device, 1, job, args.repeat)
            rows = {f"batch {b}": _engine_fps(device, b, job, args.repeat)[0] for b in (4, 16)}
            best = max(rows.values())
            report[f"engine_{device}"] = {"frames": n, "naive_fps": naive, **rows,
                                          "speedup": best / naive}
            print(f"engine {device} 512x512, {n} frames: per-frame {naive:.1f} fps; "
                  + "; ".join(f"{k} {v:.1f} fps" for k, v in rows.items())
                  + f"  -> x{best / naive:.2f} vs per-frame")
        engine = BuiltinEngine()
        engine.load(load(device="cpu", engine_batch_frames=4))
        frames = np.concatenate(list(engine.frames(job, lambda _: None, lambda: False)))
        audio_s = args.seconds
        streamed = statistics.median(
            _timed(encode_video, iter(frames), audio, work / "stream.mp4", size=(512, 512))
            for _ in range(args.repeat))
        naive = statistics.median(_encode_naive(frames, audio, work / "naive.mp4", work)
                                  for _ in range(args.repeat))
        report["encode"] = {"audio_s": audio_s, "stream_s": streamed, "png_s": naive,
                            "stream_x_realtime": audio_s / streamed,
                            "png_x_realtime": audio_s / naive, "speedup": naive / streamed}
        print(f"encode 512x512 {audio_s:.1f} s: streamed {audio_s / streamed:.2f}x real time; "
              f"via PNG files {audio_s / naive:.2f}x real time -> x{naive / streamed:.2f}")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        hand = report["handoff"] = _handoff(device, job, audio_s, work, args.repeat)
        print(f"hand-off gpu -> encode ({device}): raw {hand['raw']['bytes_per_video_s'] / 1e6:.1f}"
              f" MB per video-second, h264 {hand['h264']['bytes_per_video_s'] / 1e6:.2f} MB "
              f"(/{hand['cut']:.1f}); gpu stage {hand['raw']['gpu_stage_s']:.2f} s -> "
              f"{hand['h264']['gpu_stage_s']:.2f} s (x{hand['gpu_stage_ratio']:.2f}); encode "
              f"stage {hand['raw']['encode_s']:.2f} s -> {hand['h264']['encode_s']:.2f} s; "
              f"same final video: {hand['identical_video']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
