"""The Sonic adapter against a stand-in ``sonic.py`` that reproduces Sonic's quirks."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.engines import get_engine, reset_engines
from pipeline.engines.base import RenderRequest
from pipeline.engines.sonic import REQUIRED_WEIGHTS, SEED_FOR_ZERO, SonicEngine, sonic_seed
from pipeline.errors import Cancelled, EngineError, ImageError, OutOfMemory
from pipeline.settings import Settings, load

FAKE_SONIC = textwrap.dedent('''
    """Stand-in for Sonic's sonic.py: same API, same quirks, a test pattern for a video."""
    import copy, os, subprocess, threading, time

    class _Config:  # OmegaConf stand-in
        def __init__(self):
            self.seed, self.num_inference_steps = 42, 25
            self.motion_bucket_scale, self.frame_num = 1.0, 10

    BEHAVIOUR = "ok"
    CALLS = []
    ACTIVE = [0, 0]  # now, most at once

    class OutOfMemoryError(RuntimeError):
        pass

    class Sonic:
        config = _Config()

        def __init__(self, device_id=0, enable_interpolate_frame=True):
            if BEHAVIOUR == "no_cuda":
                raise RuntimeError("Found no NVIDIA driver on your system")
            self.device_id = device_id

        def process(self, image_path, audio_path, output_path, min_resolution=512,
                    inference_steps=25, dynamic_scale=1.0, keep_resolution=False, seed=None):
            ACTIVE[0] += 1
            ACTIVE[1] = max(ACTIVE)
            try:
                config = self.config
                if seed:
                    config.seed = seed  # a falsy seed keeps whatever the last call left
                config.num_inference_steps = inference_steps
                config.motion_bucket_scale = dynamic_scale
                CALLS.append(copy.copy(vars(config)))
                time.sleep(0.05)
                if BEHAVIOUR == "no_face":
                    return -1
                if BEHAVIOUR == "unbound":
                    raise UnboundLocalError("local variable 'bbox_s' referenced before assignment")
                if BEHAVIOUR == "oom":
                    raise OutOfMemoryError("CUDA out of memory")
                if BEHAVIOUR == "endless":  # a diffusion loop that never ends
                    config.seed = 7  # mutated mid-call, as Sonic does
                    while True:
                        try:
                            time.sleep(0.05)
                        except Exception:  # Sonic's code may swallow errors
                            pass
                if BEHAVIOUR == "ffmpeg_fails":
                    os.system("exit 1")  # the exit code is ignored, as upstream
                    return 0
                if BEHAVIOUR == "garbage":
                    open(output_path, "wb").write(b"not a video")
                    return 0
                seconds = config.frame_num / 25  # frame_num caps the audio it renders
                subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                                "color=c=gray:size=64x64:rate=25", "-i", audio_path,
                                "-t", str(seconds), "-shortest", "-c:v", "libx264",
                                "-pix_fmt", "yuv420p", "-c:a", "aac", "-y", output_path])
                return 0
            finally:
                ACTIVE[0] -= 1
''')


@pytest.fixture
def sonic_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    repo = tmp_path / "Sonic"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / "sonic.py").write_text(FAKE_SONIC)
    for item in REQUIRED_WEIGHTS:
        path = repo / "checkpoints" / item
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if "." not in path.name else path.write_bytes(b"")
    monkeypatch.delitem(sys.modules, "sonic", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield repo
    sys.modules.pop("sonic", None)


def _settings(repo: Path | None, **extra: object) -> Settings:
    return load(**{"sonic_repo": repo, "device": "cuda", **extra})


def _fake() -> ModuleType:
    return sys.modules["sonic"]


@pytest.fixture
def engine(sonic_repo: Path) -> SonicEngine:
    engine = SonicEngine()
    engine.load(_settings(sonic_repo))
    return engine


@pytest.fixture
def job(portrait_crop: Path, speech_16k: Path, tmp_path: Path) -> RenderRequest:
    return RenderRequest(portrait_crop, speech_16k, tmp_path / "out", seed=0)


def _render(engine: SonicEngine, job: RenderRequest):  # type: ignore[no-untyped-def]
    return engine.render(job, lambda _: None, lambda: False)


def test_renders_and_checks_the_video(engine: SonicEngine, job: RenderRequest) -> None:
    progress: list[float] = []
    result = engine.render(job, progress.append, lambda: False)

    assert result.video_path == job.out_dir / "sonic.mp4" and result.video_path.is_file()
    assert (result.width, result.height) == (64, 64) and result.frames > 0
    assert progress == [0.0, 1.0]
    # frame_num (10 frames = 0.4 s here) was raised to cover the whole audio
    assert _fake().CALLS[-1]["frame_num"] > 10


def test_seed_zero_is_kept_and_the_class_config_restored(engine: SonicEngine,
                                                        job: RenderRequest) -> None:
    from dataclasses import replace

    _render(engine, replace(job, seed=1234))
    _render(engine, replace(job, seed=0, inference_steps=5))

    first, second = _fake().CALLS
    assert first["seed"] == 1234
    assert second["seed"] == SEED_FOR_ZERO  # not 42, not 1234 left over from the last call
    assert second["num_inference_steps"] == 5
    config = vars(_fake().Sonic.config)
    assert (config["seed"], config["num_inference_steps"], config["frame_num"]) == (42, 25, 10)


def test_seed_mapping() -> None:
    assert sonic_seed(0) == SEED_FOR_ZERO
    assert sonic_seed(7) == 7
    assert 0 < sonic_seed(2**40) < 2**32


def test_one_call_at_a_time(engine: SonicEngine, job: RenderRequest) -> None:
    from dataclasses import replace

    jobs = [replace(job, out_dir=job.out_dir / str(i)) for i in range(3)]
    threads = [threading.Thread(target=_render, args=(engine, one)) for one in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _fake().ACTIVE[1] == 1 and len(_fake().CALLS) == 3


@pytest.mark.parametrize(("behaviour", "error", "code"), [
    ("no_face", ImageError, "image.no_face"),
    ("unbound", ImageError, "image.no_face"),
    ("oom", OutOfMemory, "resource.out_of_memory"),
    ("ffmpeg_fails", EngineError, "engine.failed"),
    ("garbage", EngineError, "engine.failed"),
])
def test_sonic_failures_get_our_codes(engine: SonicEngine, job: RenderRequest, behaviour: str,
                                      error: type[Exception], code: str) -> None:
    setattr(_fake(), "BEHAVIOUR", behaviour)
    with pytest.raises(error) as caught:
        _render(engine, job)
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert vars(_fake().Sonic.config)["seed"] == 42
    if behaviour == "oom":
        assert "GPU memory" in str(caught.value)


def test_a_cancelled_job_never_reaches_sonic(engine: SonicEngine, job: RenderRequest) -> None:
    with pytest.raises(Cancelled):
        engine.render(job, lambda _: None, lambda: True)
    assert _fake().CALLS == []


def test_unavailable_without_a_checkout(tmp_path: Path) -> None:
    reset_engines()
    with pytest.raises(EngineError) as no_setting:
        get_engine("sonic", _settings(None))
    with pytest.raises(EngineError) as no_repo:
        get_engine("sonic", _settings(tmp_path / "Sonic"))

    assert no_setting.value.code == no_repo.value.code == "engine.unavailable"
    assert "SONIC_SONIC_REPO" in no_setting.value.message
    assert str(tmp_path / "Sonic" / "sonic.py") in no_repo.value.message


def test_unavailable_names_the_missing_weights(sonic_repo: Path) -> None:
    (sonic_repo / "checkpoints" / "RIFE" / "flownet.pkl").unlink()
    with pytest.raises(EngineError) as caught:
        SonicEngine().load(_settings(sonic_repo))
    assert caught.value.code == "engine.unavailable"
    assert "RIFE/flownet.pkl" in caught.value.message


def test_weights_elsewhere_must_be_linked(sonic_repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "weights"
    (sonic_repo / "checkpoints").rename(elsewhere)
    with pytest.raises(EngineError) as caught:
        SonicEngine().load(_settings(sonic_repo, sonic_weights=elsewhere))
    assert "ln -s" in caught.value.message

    (sonic_repo / "checkpoints").symlink_to(elsewhere)
    SonicEngine().load(_settings(sonic_repo, sonic_weights=elsewhere))


def test_unavailable_without_cuda(sonic_repo: Path) -> None:
    with pytest.raises(EngineError) as on_cpu:
        SonicEngine().load(_settings(sonic_repo, device="cpu"))
    assert on_cpu.value.code == "engine.unavailable"

    sys.path.insert(0, str(sonic_repo))
    import sonic  # the stand-in

    sonic.BEHAVIOUR = "no_cuda"
    with pytest.raises(EngineError) as no_driver:
        SonicEngine().load(_settings(sonic_repo))
    assert no_driver.value.code == "engine.unavailable"
    assert "NVIDIA driver" in no_driver.value.message


@pytest.mark.integration
@pytest.mark.parametrize("stop", ["lease_taken", "budget"])
def test_the_watchdog_stops_sonic_inside_its_one_blocking_call(
        engine: SonicEngine, job: RenderRequest, stack: Settings, db_engine, unique: str,
        stop: str) -> None:
    """process() never polls should_stop: the stage's watchdog stops it from inside, and
    the adapter still restores Sonic's config and lets the next job in."""
    import time

    from sqlalchemy import text

    from pipeline.stages.runner import StageOutcome, run_stage

    task_id = f"sonic-stop-{unique}"
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                          "VALUES (:t, 'queued', 'gpu', '{}')"), {"t": task_id})
    fast = stack.model_copy(update={"heartbeat_interval_s": 1, "work_dir": job.out_dir})
    setattr(_fake(), "BEHAVIOUR", "endless")

    def stage(ctx):  # type: ignore[no-untyped-def]
        if stop == "budget":
            ctx.limit_time(1.0)
        else:
            with db_engine.begin() as conn:
                conn.execute(text("UPDATE tasks SET lease_owner = 'elsewhere' "
                                  "WHERE task_id = :t"), {"t": task_id})
        engine.render(job, lambda _: None, ctx.should_stop)
        return {}

    begun = time.monotonic()
    result = run_stage(fast, db_engine, task_id, "gpu", stage)
    assert time.monotonic() - begun < 2.5
    if stop == "budget":
        assert result.outcome is StageOutcome.FAILED and result.error.code == "stage.timeout"
    else:
        assert result.outcome is StageOutcome.SKIP
    assert _fake().ACTIVE[0] == 0 and vars(_fake().Sonic.config)["seed"] == 42
    setattr(_fake(), "BEHAVIOUR", "ok")
    assert _render(engine, job).video_path.is_file()  # the lock was released
