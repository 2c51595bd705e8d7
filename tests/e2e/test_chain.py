"""preprocess -> gpu -> encode -> upload -> callback on the real stack, with real media."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import requests

from pipeline.media.audio import prepare_audio
from pipeline.storage import get_store
from tests.e2e.conftest import MAX_INPUT_BYTES, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def ffprobe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format",
                          "-of", "json", str(path)], capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


def test_a_job_becomes_a_signed_callback_and_an_mp4_in_s3(stack_e2e: Stack, unique: str,
                                                           tmp_path) -> None:
    task_id = stack_e2e.submit(f"ok-{unique}")
    row = stack_e2e.wait_final(task_id)
    assert row["status"] == "completed", row
    assert (row["progress"], row["error_code"], row["callback_status"]) == (
        100, None, "delivered")
    assert row["result_key"] == f"videos/{task_id}.mp4"

    # The object is in MinIO; its presigned URL downloads a real H.264 + AAC MP4.
    video = tmp_path / "out.mp4"
    video.write_bytes(requests.get(row["result_url"], timeout=30).content)
    info = ffprobe(video)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and kinds["audio"]["codec_name"] == "aac"
    assert kinds["video"]["pix_fmt"] == "yuv420p"
    assert (kinds["video"]["width"], kinds["video"]["height"]) == (256, 256)
    speech = prepare_audio(stack_e2e.speech, tmp_path / "ref.wav", 60)
    assert abs(float(info["format"]["duration"]) - speech.duration_s) <= 0.1
    assert get_store(stack_e2e.settings).exists(f"videos/{task_id}.jpg")  # the poster

    # The callback: signed, the seed's three fields first, our extras after.
    hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == task_id]
    assert len(hooks) == 1 and hooks[0].verified
    assert list(hooks[0].payload)[:3] == ["task_id", "status", "video_url"]
    assert hooks[0].payload["status"] == "completed"
    assert hooks[0].payload["video_url"] == row["result_url"]
    assert hooks[0].payload["metadata"] == {"case": task_id}
    assert set(hooks[0].payload["timings"]["stages_s"]) == {"preprocess", "gpu", "encode",
                                                             "upload"}
    stages = [s for s, e in stack_e2e.events(task_id) if e == "succeeded"]
    assert stages == ["preprocess", "gpu", "encode", "upload", "callback"]


def _gradient(path) -> str:
    import cv2

    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    cv2.imwrite(str(path), np.dstack([ramp, ramp, ramp]))
    return str(path)


def _tone(path, seconds: float, codec: list[str], volume: float = 0.5) -> str:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=220:duration={seconds}:sample_rate=16000",
                    "-af", f"volume={volume}", "-ac", "1", *codec, str(path)], check=True)
    return str(path)


@pytest.mark.parametrize("case", ["image.no_face", "audio.undecodable", "audio.silent",
                                  "audio.too_long", "input.too_large",
                                  "input.forbidden_url", "engine.unavailable",
                                  "input.not_found"])
def test_each_permanent_error_fails_once_with_its_code_and_a_callback(
        stack_e2e: Stack, unique: str, case: str) -> None:
    inputs = stack_e2e.inputs
    kwargs: dict = {}
    if case == "image.no_face":
        kwargs["image"] = _gradient(inputs / f"wall-{unique}.png")
    elif case == "audio.undecodable":
        bad = inputs / f"noise-{unique}.mp3"
        bad.write_bytes(b"ID3 this is not an mp3 at all" * 50)
        kwargs["audio"] = str(bad)
    elif case == "audio.silent":
        kwargs["audio"] = _tone(inputs / f"quiet-{unique}.wav", 3, [], volume=0.0)
    elif case == "audio.too_long":  # over SONIC_MAX_AUDIO_S, small enough to fetch
        kwargs["audio"] = _tone(inputs / f"long-{unique}.mp3", 610, ["-b:a", "16k"])
    elif case == "input.too_large":  # over SONIC_MAX_INPUT_BYTES of the e2e workers
        big = inputs / f"big-{unique}.wav"
        big.write_bytes(b"\0" * (MAX_INPUT_BYTES + 1))
        kwargs["audio"] = str(big)
    elif case == "input.forbidden_url":
        kwargs["image"] = "/etc/passwd"
    elif case == "engine.unavailable":
        kwargs["engine"] = "sonic"  # no Sonic checkout or weights on this machine
    elif case == "input.not_found":
        kwargs["audio"] = str(inputs / f"missing-{unique}.wav")
    task_id = stack_e2e.submit(f"bad-{case.replace('.', '-')}-{unique}", **kwargs)
    row = stack_e2e.wait_final(task_id)
    assert (row["status"], row["error_code"]) == ("failed", case), row
    assert row["error_message"]
    assert row["callback_status"] == "delivered"
    hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == task_id]
    assert len(hooks) == 1 and hooks[0].payload["status"] == "failed"
    assert hooks[0].payload["error"]["code"] == case
    # No retry storm: the failing stage started once.
    events = stack_e2e.events(task_id)
    failing = [s for s, e in events if e == "failed"]
    assert len(failing) == 1
    assert events.count((failing[0], "started")) == 1
    assert "retrying" not in [e for _, e in events]


def test_pools_serve_stage_metrics_and_the_gpu_engine_is_warm(stack_e2e: Stack,
                                                               unique: str) -> None:
    stack_e2e.wait_final(stack_e2e.submit(f"metrics-{unique}"))
    base = stack_e2e.settings.metrics_port
    scraped = {pool: requests.get(f"http://127.0.0.1:{base + 1 + i}/metrics", timeout=10).text
               for i, pool in enumerate(("gpu", "cpu", "io"))}
    assert ('sonic_stage_duration_seconds_count{engine="builtin",outcome="succeeded",'
            'stage="gpu"}') in scraped["gpu"]
    assert 'stage="preprocess"' in scraped["cpu"] and 'stage="encode"' in scraped["cpu"]
    assert 'stage="upload"' in scraped["io"]
    log = (stack_e2e.settings.state_dir / "worker-gpu.log").read_text()
    assert "engine builtin loaded and warm in this process" in log
