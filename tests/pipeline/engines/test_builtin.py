from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.base import RenderRequest
from pipeline.media.frames import frame_count
from pipeline.engines.builtin import BuiltinEngine
from pipeline.errors import Cancelled, EngineError
from pipeline.media.audio import load_wav
from pipeline.media.encode import encode_video
from pipeline.media.ffmpeg import duration_s, probe, stream
from pipeline.media.image import decode_image
from pipeline.settings import load
from tests.pipeline.media.helpers import write_wav

RES = 128


@pytest.fixture(scope="module")
def engine() -> BuiltinEngine:
    engine = BuiltinEngine()
    engine.load(load(device="cpu", engine_batch_frames=8))
    return engine


@pytest.fixture
def job(portrait_crop: Path, speech_16k: Path, tmp_path: Path) -> RenderRequest:
    return RenderRequest(portrait_crop, speech_16k, tmp_path, min_resolution=RES, seed=3)


def _render(engine: BuiltinEngine, job: RenderRequest) -> np.ndarray:
    result = engine.render(job, lambda _: None, lambda: False)
    assert result.frames_path is not None
    return np.fromfile(result.frames_path, np.uint8).reshape(-1, result.height, result.width, 3)


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()


def test_frame_count_size_and_progress(engine: BuiltinEngine, job: RenderRequest) -> None:
    progress: list[float] = []
    result = engine.render(replace(job, min_resolution=192), progress.append, lambda: False)

    samples = len(load_wav(job.audio_path))
    assert result.frames == frame_count(samples) > 0
    assert (result.width, result.height) == (192, 192)
    assert result.frames_path is not None
    assert result.frames_path.stat().st_size == result.frames * 192 * 192 * 3
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert progress == sorted(progress) and len(progress) > 3
    assert not list(job.out_dir.glob("*.partial"))


def test_same_seed_same_frames_other_seed_other_frames(engine: BuiltinEngine,
                                                       job: RenderRequest) -> None:
    first = _digest(_render(engine, job))
    again = _digest(_render(engine, job))
    other = _digest(_render(engine, replace(job, seed=4)))

    assert first == again
    assert other != first


def test_the_mouth_follows_the_loudness(engine: BuiltinEngine, job: RenderRequest) -> None:
    # Given no head motion, what moves is the jaw: the lower face, when the speech is loud.
    frames = _render(engine, replace(job, motion_scale=0.0)).astype(np.float32)
    still = decode_image(job.image_path).astype(np.float32)
    change = np.abs(frames - still).mean(axis=3)  # (F, H, W)
    upper, lower = change[:, : RES // 2].mean(axis=(1, 2)), change[:, RES // 2:].mean(axis=(1, 2))
    assert lower.mean() > 5 * upper.mean()

    samples = load_wav(job.audio_path)
    n = len(samples) // 1280
    key_rms = np.sqrt((samples[: n * 1280].reshape(n, 1280) ** 2).mean(axis=1))
    assert np.corrcoef(lower[0::2], key_rms)[0, 1] > 0.5


def test_silence_leaves_the_face_still(engine: BuiltinEngine, job: RenderRequest,
                                       tmp_path: Path) -> None:
    quiet = write_wav(tmp_path / "quiet.wav", np.zeros(16_000))
    frames = _render(engine, replace(job, audio_path=quiet, motion_scale=0.0))

    assert np.array_equal(frames[0], decode_image(job.image_path))
    assert all(np.array_equal(f, frames[0]) for f in frames)


def test_head_motion_moves_the_whole_frame(engine: BuiltinEngine, job: RenderRequest) -> None:
    frames = _render(engine, replace(job, dynamic_scale=0.0, motion_scale=2.0)).astype(np.float32)
    change = np.abs(frames - frames[0]).mean(axis=(0, 3))
    assert change[: RES // 2].mean() > 0.5


@pytest.mark.parametrize("verdict", [True, "task.deadline"])
def test_stop_between_batches(engine: BuiltinEngine, job: RenderRequest,
                              verdict: bool | str) -> None:
    polls: list[int] = []

    def should_stop() -> bool | str:
        polls.append(1)
        return verdict if len(polls) > 2 else False

    with pytest.raises(Cancelled) as caught:
        engine.render(job, lambda _: None, should_stop)

    expected = "task.deadline" if verdict == "task.deadline" else "task.cancelled"
    assert caught.value.code == expected
    assert not list(job.out_dir.iterdir())


def test_streamed_frames_encode_to_a_video_as_long_as_the_audio(engine: BuiltinEngine,
                                                                job: RenderRequest) -> None:
    out = job.out_dir / "video.mp4"
    encode_video(engine.frames(job, lambda _: None, lambda: False), job.audio_path, out,
                 size=(RES, RES))

    info = probe(out)
    audio_s = len(load_wav(job.audio_path)) / 16_000
    video = stream(info, "video")
    assert video is not None and video["codec_name"] == "h264"
    assert duration_s(info) == pytest.approx(audio_s, abs=0.1)


def test_cuda_without_a_gpu_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError) as caught:
        BuiltinEngine().load(load(device="cuda"))
    assert caught.value.code == "engine.unavailable"


@pytest.mark.parametrize("steps", [1_000, 10**6, 10**9])
def test_absurd_steps_cost_what_1000_do(engine: BuiltinEngine, job: RenderRequest,
                                        steps: int) -> None:
    import time

    begun = time.monotonic()
    frames = _render(engine, replace(job, inference_steps=steps))
    assert time.monotonic() - begun < 30  # 1e9 steps once meant days before frame one
    assert _digest(frames) == _digest(_render(engine, replace(job, inference_steps=1_000)))


@pytest.mark.parametrize("raised", ["cuda", "runtime"])
def test_out_of_memory_is_its_own_code(engine: BuiltinEngine, job: RenderRequest,
                                       monkeypatch: pytest.MonkeyPatch, raised: str) -> None:
    import torch

    from pipeline.engines import warp
    from pipeline.errors import OutOfMemory

    def render(*args: object, **kwargs: object) -> None:
        if raised == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(warp.FaceWarp, "render", render)
    with pytest.raises(OutOfMemory) as caught:
        _render(engine, job)
    assert caught.value.code == "resource.out_of_memory"
    assert not list(job.out_dir.glob("*.partial"))
