"""Field inputs through the real chain: each kind ends with its precise code and a callback,
or completes with the user's own audio and no colour from under transparent pixels.

Every job of the module is submitted at once (the pools work through them side by side);
each test then waits for its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import text

from tests.e2e.conftest import Stack
from tests.pipeline.media.builders import (FIELD, at_level, clip, cutout, encode, green_share,
                                           hum, jpeg_bomb, noise, png_bomb, speech_samples,
                                           surround, watched_fifo, webp_bomb)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Small and quick renders: the frames' content is not what these tests look at.
CONFIG = {"min_resolution": 128, "inference_steps": 2, "dynamic_scale": 1.0,
          "motion_scale": 1.0, "seed": 3}
WAIT_S = 600


@dataclass
class Job:
    task_id: str
    expect: str  # "completed" or an error code
    audio_s: float | None = None
    audio_format: tuple[int, int] | None = None  # (rate, channels) of the video's audio
    alpha: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _inputs(root: Path, stack: Stack) -> dict[str, dict[str, Any]]:
    """Each case's image/audio (paths under the stack's input root) and expectations."""
    work = root / "make"
    work.mkdir()
    line = at_level(speech_samples(work, "Good morning, this is me speaking.", 48_000), -20)
    line16 = at_level(speech_samples(work, "Good morning, this is me speaking.", 16_000), -22)
    say = len(line16) / 16_000
    cases: dict[str, dict[str, Any]] = {}

    def put(name: str, src: Path) -> str:
        dst = root / name
        shutil.copy(src, dst)
        return str(dst)

    # --- kind 3: images ---
    cases["c07-alpha-cutout"] = {"image": put("c07.png", FIELD / "c07_alpha_cutout.png"),
                                 "expect": "completed", "alpha": True}
    cutout().save(root / "cutout.webp", lossless=True, exact=True)
    cases["alpha-webp"] = {"image": str(root / "cutout.webp"), "expect": "completed",
                           "alpha": True}
    cutout().convert("LA").save(root / "cutout-la.png")
    cases["alpha-la-png"] = {"image": str(root / "cutout-la.png"), "expect": "completed",
                             "alpha": True}
    cases["c12-png-bomb"] = {"image": put("c12.png", FIELD / "c12_png_bomb.png"),
                             "expect": "image.too_large"}
    cases["jpeg-bomb"] = {"image": str(jpeg_bomb(root / "bomb.jpg")), "expect": "image.too_large"}
    cases["webp-bomb"] = {"image": str(webp_bomb(root / "bomb.webp")),
                          "expect": "image.too_large"}
    cases["png-100mp"] = {"image": str(png_bomb(root / "100mp.png", 10_000, 10_000)),
                          "expect": "image.too_large"}
    # --- kind 4: audio ---
    cases["c08-48k-stereo"] = {"audio": put("c08.m4a", FIELD / "c08_speech_48k_stereo.m4a"),
                               "expect": "completed", "audio_s": 4.8,
                               "audio_format": (48_000, 2)}
    mono = clip(work / "mono44.wav", at_level(speech_samples(work, "Good morning.", 44_100), -20),
                rate=44_100)
    cases["mp3-44k-mono"] = {"audio": str(encode(mono, root / "mono.mp3", "-b:a", "96k")),
                             "expect": "completed", "audio_format": (44_100, 1)}
    cases["aac-5.1"] = {"audio": str(surround(root / "surround.m4a", line)),
                        "expect": "completed", "audio_format": (48_000, 2)}
    narrow = at_level(speech_samples(work, "Good morning.", 8_000), -20)
    cases["wav-8k"] = {"audio": str(clip(root / "narrow.wav", narrow, rate=8_000)),
                       "expect": "completed", "audio_format": (16_000, 1)}
    cases["c09-leading-silence"] = {"audio": put("c09.flac", FIELD / "c09_leading_silence.flac"),
                                    "expect": "completed", "audio_s": 18.8,
                                    "audio_format": (16_000, 1)}
    cases["line-in-the-middle"] = {
        "audio": str(clip(root / "middle.wav", noise(5, -75), line16, noise(3, -75, seed=1))),
        "expect": "completed", "audio_s": 8 + say, "audio_format": (16_000, 1)}
    cases["room-noise-only"] = {"audio": str(clip(root / "room.wav", noise(6, -70))),
                                "expect": "audio.silent"}
    cases["low-hum-only"] = {"audio": str(clip(root / "hum.wav", hum(4, -58))),
                             "expect": "audio.silent"}
    # --- kind 7: inputs ---
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n"
    fifo = root / "private" / "secret.wav"  # a FIFO: tells whether anything opened it
    fifo.parent.mkdir()
    (root / "playlist.mp3").write_text(hls.format(fifo))
    (root / "playlist.m3u8").write_text(hls.format(fifo.as_uri()))
    (root / "concat.wav").write_text(f"ffconcat version 1.0\nfile '{fifo}'\n")
    for name in ("playlist.mp3", "playlist.m3u8", "concat.wav"):
        cases[f"playlist-{name}"] = {"audio": str(root / name),
                                     "expect": "input.unsupported_format", "fifo": fifo}
    for folder, src in (("123", PORTRAIT_JPG), ("124", stack.speech)):
        (root / folder).mkdir()
        shutil.copy(src, root / folder / "original")
    cases["same-base-name"] = {"image": str(root / "123" / "original"),
                               "audio": str(root / "124" / "original"),
                               "expect": "completed", "audio_format": (22_050, 1)}
    return cases


PORTRAIT_JPG = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"


@pytest.fixture(scope="module")
def field_jobs(e2e: Stack) -> dict[str, Any]:
    for pool, proc in list(e2e.workers.items()):
        if proc.poll() is not None:  # an earlier test killed it
            e2e.start_worker(pool)
    root = e2e.inputs / f"field-{e2e.topic}"
    root.mkdir()
    cases = _inputs(root, e2e)
    fifo = root / "private" / "secret.wav"
    with watched_fifo(fifo) as opened:
        jobs = {}
        for name, case in cases.items():
            task_id = f"field-{name.replace('.', '-')}-{e2e.topic}"
            e2e.submit(task_id, image=case.get("image"), audio=case.get("audio"),
                       config=dict(CONFIG))
            jobs[name] = Job(task_id, case["expect"], case.get("audio_s"),
                             case.get("audio_format"), case.get("alpha", False))
        rows = {name: e2e.wait_final(job.task_id, timeout=WAIT_S) for name, job in jobs.items()}
        fifo_opened = opened()
    return {"jobs": jobs, "rows": rows, "fifo_opened": fifo_opened}


def _hooks(stack: Stack, task_id: str) -> list[Any]:
    return [r for r in stack.receiver.requests
            if r.payload and r.payload.get("task_id") == task_id]


def _download(row: dict[str, Any], path: Path) -> Path:
    path.write_bytes(requests.get(row["result_url"], timeout=30).content)
    return path


def _probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of",
                          "json", str(path)], capture_output=True, check=True, text=True)
    info = json.loads(out.stdout)
    return {s["codec_type"]: s for s in info["streams"]} | {"format": info["format"]}


def _frames(path: Path, size: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", "fps=5",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


FAILING = ["c12-png-bomb", "jpeg-bomb", "webp-bomb", "png-100mp", "room-noise-only",
           "low-hum-only", "playlist-playlist.mp3", "playlist-playlist.m3u8",
           "playlist-concat.wav"]
COMPLETING = ["c07-alpha-cutout", "alpha-webp", "alpha-la-png", "c08-48k-stereo",
              "mp3-44k-mono", "aac-5.1", "wav-8k", "c09-leading-silence",
              "line-in-the-middle", "same-base-name"]


@pytest.mark.parametrize("name", FAILING)
def test_a_bad_field_input_fails_once_with_its_code_and_a_callback(
        e2e: Stack, field_jobs: dict[str, Any], name: str) -> None:
    job, row = field_jobs["jobs"][name], field_jobs["rows"][name]
    assert (row["status"], row["error_code"]) == ("failed", job.expect), row
    assert row["callback_status"] == "delivered" and row["error_message"]
    hooks = _hooks(e2e, job.task_id)
    assert len(hooks) == 1 and hooks[0].verified
    assert hooks[0].payload["status"] == "failed"
    assert hooks[0].payload["error"]["code"] == job.expect
    with e2e.db_engine.connect() as conn:
        failed = conn.execute(text(
            "SELECT stage, duration_s FROM task_events WHERE task_id = :t AND event = 'failed'"),
            {"t": job.task_id}).all()
    assert [stage for stage, _ in failed] == ["preprocess"]  # once, no retry
    if job.expect == "image.too_large":
        assert failed[0][1] < 5.0  # refused from the header: no decode of the pixels


def test_no_playlist_made_a_worker_open_the_file_it_names(field_jobs: dict[str, Any]) -> None:
    assert field_jobs["fifo_opened"] is False


@pytest.mark.parametrize("name", COMPLETING)
def test_a_field_input_completes_with_the_users_audio(
        e2e: Stack, field_jobs: dict[str, Any], name: str, tmp_path: Path) -> None:
    job, row = field_jobs["jobs"][name], field_jobs["rows"][name]
    assert (row["status"], row["error_code"]) == ("completed", None), row
    assert row["callback_status"] == "delivered"
    hooks = _hooks(e2e, job.task_id)
    assert len(hooks) == 1 and hooks[0].verified
    assert hooks[0].payload["video_url"] == row["result_url"]

    video = _download(row, tmp_path / "out.mp4")
    info = _probe(video)
    assert info["video"]["codec_name"] == "h264" and info["audio"]["codec_name"] == "aac"
    if job.audio_format is not None:
        assert (int(info["audio"]["sample_rate"]), info["audio"]["channels"]) == job.audio_format
    video_s, audio_s = float(info["video"]["duration"]), float(info["audio"]["duration"])
    assert audio_s <= video_s + 0.001  # the audio never runs past the last frame
    if job.audio_s is not None:
        assert video_s == pytest.approx(job.audio_s, abs=0.05)
    if job.alpha:
        frames = _frames(video, int(info["video"]["width"]))
        assert len(frames) >= 5
        assert max(green_share(f) for f in frames) < 0.01


def test_the_cutout_source_really_hides_green() -> None:
    """The alpha checks above can fail: the sources hold green under transparent pixels."""
    with Image.open(FIELD / "c07_alpha_cutout.png") as field_png:
        assert green_share(np.asarray(field_png.convert("RGB"))) > 0.1
    assert green_share(np.asarray(cutout().convert("RGB"))) > 0.1
