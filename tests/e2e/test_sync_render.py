"""The synchronous mode and the distributed chain render the same video: the same job and
seed through real workers (preprocess, gpu, encode, upload to MinIO) and through
``sonic-pipeline render`` decode to identical frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent / "sonic-pipeline"
KNOBS = {"min_resolution": 128, "inference_steps": 3, "dynamic_scale": 1.3,
         "motion_scale": 0.8, "seed": 4242}


def frames(mp4: Path) -> np.ndarray:
    """Every decoded frame of ``mp4`` as (N, H, W, 3) RGB."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height", "-of", "csv=p=0", str(mp4)],
                         capture_output=True, text=True, check=True)
    width, height = map(int, out.stdout.strip().split(","))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mp4), "-map", "0:v:0", "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                         check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def render(stack: Stack, out: Path, **knobs: object) -> None:
    argv = [str(BIN), "render", "--image", str(stack.inputs / "face.jpg"),
            "--audio", str(stack.speech), "-o", str(out)]
    for knob, value in knobs.items():
        argv += ["--" + knob.replace("_", "-"), str(value)]
    # The workers' own settings (engine, device, crf), none of their services.
    env = dict(stack.env, SONIC_REDIS_PORT="1", SONIC_PG_PORT="1", SONIC_KAFKA_BOOTSTRAP="x:1")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          cwd=out.parent)
    assert proc.returncode == 0, proc.stderr


def test_sync_render_and_the_chain_decode_to_identical_frames(stack_e2e: Stack, unique: str,
                                                              tmp_path: Path) -> None:
    task_id = stack_e2e.submit(f"sync-eq-{unique}", config=dict(KNOBS), callback=False)
    row = stack_e2e.wait_final(task_id, callback=False)
    assert row["status"] == "completed", row
    chain = tmp_path / "chain.mp4"
    chain.write_bytes(requests.get(row["result_url"], timeout=30).content)

    local = tmp_path / "local.mp4"
    render(stack_e2e, local, **KNOBS)
    a, b = frames(chain), frames(local)
    assert a.shape == b.shape and a.shape[1:] == (128, 128, 3) and len(a) > 25
    assert np.array_equal(a, b), f"max difference {np.abs(a.astype(int) - b).max()}"

    # The comparison can tell renders apart: another seed moves other pixels.
    other = tmp_path / "other.mp4"
    render(stack_e2e, other, **{**KNOBS, "seed": 4243})
    c = frames(other)
    assert c.shape == a.shape and not np.array_equal(a, c)
