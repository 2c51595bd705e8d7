"""Adapter for the Sonic checkout (github.com/jixiaozhong/Sonic) and its weights.

Sonic's quirks, handled here:
- ``Sonic.config`` is class-level and ``process`` mutates it (steps, scale, even the
  seed in some versions): every call runs under a lock with the config snapshotted
  before and restored after.
- ``seed_everything(seed if seed else config.seed)`` ignores seed 0: seeds are taken
  modulo 2**32 - 1 (numpy's range) and 0 is sent as 4294967295, so seed 0 is a seed
  of its own and still deterministic.
- ``config.frame_num`` silently truncates long audio: raised per call to cover it.
- No face: ``preprocess`` raises ``UnboundLocalError``, ``process`` returns -1; both
  become ``image.no_face``.
- Its ffmpeg runs through ``os.system`` and the exit code is ignored: the output must
  exist and ffprobe must read a video stream from it, else ``engine.failed``.
- ``process`` is one blocking call: cancel and deadline are noticed before and after it;
  inside it, the stage's watchdog raises in this thread (lease lost, cancel, budget), an
  exception that passes ``except Exception`` and is noticed between Sonic's Python steps.
- Out of GPU memory (``torch.cuda.OutOfMemoryError``) is ``resource.out_of_memory``.
"""

from __future__ import annotations

import copy
import importlib
import re
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

from pipeline.engines.base import Engine, Progress, RenderRequest, RenderResult, StopCheck
from pipeline.engines.base import check_stop
from pipeline.errors import EngineError, ImageError, OutOfMemory, PipelineError
from pipeline.faults import describe, is_out_of_memory, is_soft_time_limit
from pipeline.media.ffmpeg import probe, stream

#: What Sonic loads from ``<repo>/checkpoints`` (paths relative to it).
REQUIRED_WEIGHTS = ("Sonic/unet.pth", "Sonic/audio2token.pth", "Sonic/audio2bucket.pth",
                    "stable-video-diffusion-img2vid-xt", "whisper-tiny", "RIFE/flownet.pkl",
                    "yoloface_v5m.pt")
#: Seed sent in place of 0 (Sonic treats a falsy seed as "use the config's").
SEED_FOR_ZERO = 2**32 - 1
#: Sonic pastes paths into a shell string: refuse characters that would break it.
_UNSAFE_PATH = re.compile(r'["$`\\]')


def sonic_seed(seed: int) -> int:
    """The seed to hand Sonic: within numpy's range and never 0."""
    return seed % SEED_FOR_ZERO or SEED_FOR_ZERO


def _unavailable(message: str) -> EngineError:
    return EngineError(message, code="engine.unavailable")


def check_install(repo: Path | None, weights: Path | None) -> tuple[Path, Path]:
    """The Sonic checkout and its weights dir; ``engine.unavailable`` naming what is missing."""
    if repo is None:
        raise _unavailable("the sonic engine needs SONIC_SONIC_REPO (a Sonic checkout)")
    if not (repo / "sonic.py").is_file():
        raise _unavailable(f"Sonic checkout not found: {repo / 'sonic.py'} does not exist")
    checkpoints = repo / "checkpoints"
    weights = weights or checkpoints
    missing = [str(weights / item) for item in REQUIRED_WEIGHTS if not (weights / item).exists()]
    if missing:
        raise _unavailable(f"Sonic weights missing: {', '.join(missing)}")
    if checkpoints.resolve() != weights.resolve():
        raise _unavailable(f"Sonic loads its weights from {checkpoints}; link it to {weights} "
                           f"(ln -s {weights} {checkpoints})")
    return repo, weights


def _device_id(device: str) -> int:
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise _unavailable(f"the sonic engine needs a CUDA device, not {device!r}")


class SonicEngine(Engine):
    name = "sonic"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self._device = "cuda:0"

    def load(self, settings: Any) -> None:
        repo, _ = check_install(settings.sonic_repo, settings.sonic_weights)
        device_id = _device_id(str(settings.device))
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))
        try:
            module = importlib.import_module("sonic")
            if Path(module.__file__ or "").resolve() != (repo / "sonic.py").resolve():
                raise _unavailable(f"another module named 'sonic' is loaded: {module.__file__}")
            self._model = module.Sonic(device_id)
        except PipelineError:
            raise
        except Exception as exc:  # CUDA missing, broken install: not a job's fault
            raise _unavailable(f"Sonic failed to load: {type(exc).__name__}: {exc}") from exc
        self._device = f"cuda:{device_id}"

    def _call(self, job: RenderRequest, out: Path, audio_len: int) -> Any:
        """``process`` under the lock, with the class-level config restored afterwards."""
        owner = self._model if "config" in vars(self._model) else type(self._model)
        with self._lock:
            saved = copy.deepcopy(owner.config)
            try:
                if getattr(owner.config, "frame_num", audio_len) < audio_len:
                    owner.config.frame_num = audio_len
                return self._model.process(
                    str(job.image_path), str(job.audio_path), str(out),
                    min_resolution=job.min_resolution, inference_steps=job.inference_steps,
                    dynamic_scale=job.dynamic_scale, seed=sonic_seed(job.seed))
            except UnboundLocalError as exc:
                raise ImageError(f"Sonic found no face in {job.image_path.name}",
                                 code="image.no_face") from exc
            except Exception as exc:
                if is_soft_time_limit(exc):
                    raise  # the runner reports it as stage.timeout
                if is_out_of_memory(exc):
                    raise OutOfMemory(f"Sonic ran out of GPU memory: {describe(exc)} (it keeps "
                                      "the whole video on the GPU for frame interpolation; "
                                      "shorten the audio)",
                                      exception=type(exc).__name__) from exc
                raise EngineError(f"Sonic failed: {type(exc).__name__}: {exc}",
                                  code="engine.failed") from exc
            finally:
                setattr(owner, "config", saved)

    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        """Run Sonic on the prepared image and audio; ``motion_scale`` has no Sonic knob."""
        if self._model is None:
            raise _unavailable("engine used before load()")
        started = time.monotonic()
        out = job.out_dir / "sonic.mp4"
        if _UNSAFE_PATH.search(str(out)) or str(out).count(".mp4") != 1:
            raise EngineError(f"output path unusable by Sonic: {out}", code="engine.failed")
        check_stop(should_stop)
        on_progress(0.0)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        with wave.open(str(job.audio_path), "rb") as wav:
            samples, audio_s = wav.getnframes(), wav.getnframes() / wav.getframerate()
        if self._call(job, out, samples // 640 + 1) == -1:
            raise ImageError(f"Sonic found no face in {job.image_path.name}", code="image.no_face")
        check_stop(should_stop)
        if not out.is_file() or out.stat().st_size == 0:
            raise EngineError("Sonic wrote no video (its ffmpeg step failed)", code="engine.failed")
        info = probe(out, error=EngineError, code="engine.failed")
        video = stream(info, "video")
        seconds = float(info["format"].get("duration") or 0.0)
        if video is None or seconds < audio_s - 0.5:
            raise EngineError(f"Sonic's video is unusable: {seconds:.2f} s for {audio_s:.2f} s "
                              "of audio", code="engine.failed")
        on_progress(1.0)
        frames = str(video.get("nb_frames", ""))
        return RenderResult(engine=self.name, width=int(video["width"]),
                            height=int(video["height"]),
                            frames=int(frames) if frames.isdigit() else 0,
                            video_path=out, elapsed_s=time.monotonic() - started,
                            device=self._device)
