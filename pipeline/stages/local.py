"""The synchronous mode: one job's preprocess, gpu and encode stages in this process, with
no Kafka, Redis or PostgreSQL (``sonic-pipeline render``; the degrade switch for one-off
jobs and for operators when the cluster is down).

The stage functions are the distributed ones, unchanged; :class:`LocalContext` gives them
what :class:`~pipeline.stages.runner.StageContext` gives them in a worker (the task row's
``payload``/``config``/``engine``/``deadline``, a work dir, progress, stop checks, a time
budget) from memory instead of a leased database row. The job goes through the same door
(:func:`pipeline.jobs.decode`: the same codes for the same bad knobs) and its inputs
through the same checks and fetch (:mod:`pipeline.inputs`), with one difference made
explicit by :func:`local_settings`: a local file given on the command line is the
operator's own, so the input roots of this run are the directories of those files (and
only them). The settings of every other process are untouched.

    summary = render_local(settings, "/home/me/face.jpg", "/home/me/line.wav",
                           Path("out.mp4"), config={"seed": 7}, on_progress=print)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline import faults
from pipeline.atomic import atomic_write
from pipeline.errors import Cancelled, StageTimeout
from pipeline.jobs import decode
from pipeline.settings import Settings
from pipeline.stages import encode, inference, preprocess
from pipeline.stages.artifacts import read_json, task_workdir

__all__ = ["LOCAL_STAGES", "LocalContext", "local_settings", "render_local"]

#: The stages the synchronous mode runs, in order (upload and callback have no local use:
#: the video is written where the operator asked).
LOCAL_STAGES: tuple[tuple[str, Callable[[Any], dict[str, Any]]], ...] = (
    ("preprocess", preprocess.run), ("gpu", inference.run), ("encode", encode.run))

#: ``on_progress(stage, percent)``: the job's progress, 0 to 100, never decreasing.
ProgressFn = Callable[[str, float], None]
#: ``on_event(name, detail)``: something a stage reported (``waiting_for_credential``).
EventFn = Callable[[str, dict[str, Any]], None]


class LocalContext:
    """A stage's context without a database: the same attributes and methods the stage
    functions use of :class:`~pipeline.stages.runner.StageContext`."""

    def __init__(self, settings: Settings, task: dict[str, Any], workdir: Path,
                 on_progress: ProgressFn | None = None, on_event: EventFn | None = None) -> None:
        self.settings = settings
        self.task = task
        self.task_id: str = task["task_id"]
        self.workdir = workdir
        self.stage = ""
        self.started = time.monotonic()
        self.budget_s: float | None = None
        self.percent = 0.0
        #: ``(stage, name, detail)`` of every event the stages reported, in order.
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._on_progress = on_progress
        self._on_event = on_event

    def begin(self, stage: str) -> None:
        """Start ``stage``: its own clock, no budget until it sets one."""
        self.stage, self.started, self.budget_s = stage, time.monotonic(), None

    def progress(self, percent: float) -> None:
        """Record progress (0 to 100; a lower value than before is ignored)."""
        self.percent = max(self.percent, min(100.0, float(percent)))
        if self._on_progress is not None:
            self._on_progress(self.stage, self.percent)

    def event(self, name: str, **detail: Any) -> None:
        """A status event of the running stage (the distributed path journals it)."""
        self.events.append((self.stage, name, detail))
        if self._on_event is not None:
            self._on_event(name, detail)

    def limit_time(self, seconds: float) -> None:
        """The stage's budget from its start; past it ``should_stop`` raises ``stage.timeout``."""
        self.budget_s = max(0.0, float(seconds))

    def budget_deadline(self) -> float | None:
        return None if self.budget_s is None else self.started + self.budget_s

    def should_stop(self) -> bool:
        """Raise ``stage.timeout`` past the budget, ``task.deadline`` past the job's deadline;
        else False. (Ctrl-C is a KeyboardInterrupt, as anywhere.)"""
        end = self.budget_deadline()
        if end is not None and time.monotonic() >= end:
            raise StageTimeout(f"the {self.stage} stage ran past its budget of "
                               f"{self.budget_s:.0f} s", budget_s=self.budget_s)
        deadline = self.task.get("deadline")
        if deadline is not None and datetime.now(timezone.utc) > deadline:
            raise Cancelled(f"deadline {deadline.isoformat()} passed", code="task.deadline")
        return False


def _local_path(ref: str) -> Path | None:
    """The file a command-line input names (a path, relative or not, or ``file://``);
    None for another scheme (s3, http: checked as in the distributed path)."""
    parts = urlsplit(ref)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # not a Windows drive letter
        return None
    return Path(ref)


def local_settings(settings: Settings, refs: list[str], work_dir: Path) -> tuple[Settings, list[str]]:
    """The settings of one synchronous run and the inputs as absolute paths.

    The input roots become the real directories of the local files named in ``refs``
    (symlinks resolved, so the checks' own resolution agrees); with no local file they
    stay as configured. ``work_dir`` replaces the shared work dir. Nothing else changes:
    caps, schemes, hosts and buckets are the configured ones.
    """
    roots: list[Path] = []
    out: list[str] = []
    for ref in refs:
        path = _local_path(ref)
        if path is None:
            out.append(ref)
            continue
        real = Path(os.path.realpath(path.expanduser()))
        if real.parent not in roots:
            roots.append(real.parent)
        out.append(str(real))
    update: dict[str, Any] = {"work_dir": work_dir}
    if roots:
        update["input_roots"] = roots
    return settings.model_copy(update=update), out


def render_local(settings: Settings, image: str, audio: str, output: Path, *,
                 config: dict[str, Any] | None = None, engine: str | None = None,
                 work_dir: Path | None = None, on_progress: ProgressFn | None = None,
                 on_event: EventFn | None = None) -> dict[str, Any]:
    """Render one job in this process and write its MP4 to ``output`` (atomically).

    ``config``: the job message's knobs, unvalidated (``None`` values mean absent).
    ``work_dir``: where the stages work (default: a fresh temporary directory), removed
    afterwards. Returns ``{"output", "task_id", "engine", "frames", "duration_s",
    "size_bytes", "stages_s", "total_s"}``. Raises the stages' coded
    :class:`~pipeline.errors.PipelineError` (any other exception classified as a worker
    would, :func:`pipeline.faults.classify`).
    """
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="sonic-render-", dir=work_dir))
    try:
        run_settings, (image_ref, audio_ref) = local_settings(settings, [image, audio], root)
        task_id = f"render-{uuid.uuid4().hex}"
        message: dict[str, Any] = {"task_id": task_id, "image_url": image_ref,
                                   "audio_url": audio_ref, "config": config or {}}
        if engine:
            message["engine"] = engine
        job = decode(json.dumps(message).encode(), run_settings)
        task = {"task_id": task_id, "payload": json.loads(job.payload_json()),
                "config": json.loads(job.config_json()), "engine": job.engine,
                "deadline": job.deadline_at(None)}
        workdir = task_workdir(root, task_id)
        workdir.mkdir(parents=True)
        ctx = LocalContext(run_settings, task, workdir, on_progress, on_event)
        stages_s: dict[str, float] = {}
        for stage, fn in LOCAL_STAGES:
            ctx.begin(stage)
            try:
                fields = fn(ctx) or {}
            except Exception as exc:
                raise faults.classify(exc) from exc
            stages_s[stage] = round(time.monotonic() - ctx.started, 3)
            if "progress" in fields:
                ctx.progress(float(fields["progress"]))
        with open(workdir / "video.mp4", "rb") as video:
            atomic_write(output, lambda out: shutil.copyfileobj(video, out, 1024 * 1024))
        encoded = read_json(workdir / "encode.json")
        render = read_json(workdir / "render.json")
        ctx.begin("done")
        ctx.progress(100)
        return {"output": str(output), "task_id": task_id, "engine": render.get("engine"),
                "frames": encoded.get("frames"), "duration_s": encoded.get("duration_s"),
                "size_bytes": output.stat().st_size, "stages_s": stages_s,
                "total_s": round(time.monotonic() - started, 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
