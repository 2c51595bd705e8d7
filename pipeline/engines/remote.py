"""The ``remote`` engine: the render runs on an HTTP inference service, called with a key
from the pool every worker shares (:mod:`pipeline.engines.credentials`).

    wait for a slot (pool) --> POST /v1/render (remote_call) --> 2xx: the video or frames
          ^                                                   |
          +---- 429/5xx/no answer: that key cools down <------+  401/403: key disabled
                                                                 other 4xx: engine.failed

A job never fails because keys cool down: it waits, polling its stop checks, so its
deadline (``task.deadline``), the gpu budget (``stage.timeout``) or a cancel ends it, and
says so once: a ``waiting_for_credential`` status event (``task_events`` in a worker, the
progress line of ``sonic-pipeline render``), a metric, and its line in ``sonic-pipeline
credentials``. When every key is disabled it fails with ``engine.unavailable``.

The call runs on a helper thread while the stage's thread keeps polling its stop checks;
a job stopped mid-call leaves the call to finish on its own (its slot is released, its
answer dropped).

Status events reach the stage through the context whose ``should_stop`` the engine gets:
its ``event(name, **detail)`` when it has one (the synchronous mode's), else a
``task_events`` row through its database engine and lease (a worker's).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from pipeline import metrics
from pipeline.engines.base import Engine, Progress, RenderRequest, RenderResult, StopCheck
from pipeline.engines.base import check_stop
from pipeline.errors import ConfigError, EngineError, TransportError
from pipeline.media.ffmpeg import probe, stream

from .credentials import Grant, Outcome, pool_for
from .remote_call import Answer, build_body, post

log = logging.getLogger(__name__)

#: Seconds between stop checks while waiting for a slot or an answer.
POLL_S = 0.25
#: A wait this long (or any wait on cooling keys) is reported as waiting_for_credential.
REPORT_AFTER_S = 1.0
KEY_STATE = {Outcome.AUTH: 2, Outcome.COOL: 1}

Report = Callable[[str, dict[str, Any]], None]


def status_reporter(should_stop: StopCheck) -> Report:
    """``report(event, detail)`` into the job's status (see the module docstring); best
    effort: a failed write is logged, never raised into the render."""
    ctx = getattr(should_stop, "__self__", None)
    event = getattr(ctx, "event", None)
    lease = getattr(ctx, "lease", None)

    def report(name: str, detail: dict[str, Any]) -> None:
        try:
            if callable(event):
                event(name, **detail)
            elif lease is not None and getattr(ctx, "db_engine", None) is not None:
                from pipeline.state import journal

                journal.record(ctx.db_engine, lease.task_id, lease.stage, name,  # type: ignore[union-attr]
                               worker=lease.owner, attempt=lease.attempt, detail=detail)
        except Exception as exc:  # noqa: BLE001 - a status line never fails a render
            log.warning("status event %s not recorded: %s", name, exc)

    return report


class RemoteEngine(Engine):
    name = "remote"

    def load(self, settings: Any) -> None:
        url = (settings.remote_url or "").rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise EngineError("the remote engine needs SONIC_REMOTE_URL (http or https)",
                              code="engine.unavailable")
        try:
            self.pool = pool_for(settings)
        except ConfigError as exc:
            raise EngineError(exc.message, code="engine.unavailable") from None
        self.url = url + "/v1/render"
        self.timeout_s = float(settings.remote_timeout_s)
        self.max_bytes = int(settings.remote_max_response_bytes)
        self.session = requests.Session()

    def render(self, job: RenderRequest, on_progress: Progress,
               should_stop: StopCheck) -> RenderResult:
        """Render ``job`` remotely: wait for a slot, call, retry on another key after a
        429/5xx/401/403, until an answer or a stop check ends it."""
        started = time.monotonic()
        job.out_dir.mkdir(parents=True, exist_ok=True)
        body, content_type = build_body(job)
        report = status_reporter(should_stop)
        on_progress(0.0)
        while True:
            grant = self._slot(job, should_stop, report)
            answer = self._call(grant, job, body, content_type, should_stop)
            if answer.outcome is Outcome.OK:
                result = self._result(answer, started)
                on_progress(1.0)
                return result
            if answer.outcome is Outcome.REJECTED:
                raise EngineError(f"the remote service refused the job: HTTP {answer.status}: "
                                  f"{answer.text[:500]}", code="engine.failed")

    def _slot(self, job: RenderRequest, should_stop: StopCheck, report: Report) -> Grant:
        """Wait for a slot (bounded by the stop checks); report a long wait once."""
        since, reported, who = time.monotonic(), False, job.out_dir.parent.name
        try:
            while True:
                check_stop(should_stop)
                try:
                    got = self.pool.acquire()
                except redis.RedisError as exc:
                    raise TransportError(f"the credential pool's Redis: {exc}") from exc
                if isinstance(got, Grant):
                    if reported:
                        report("credential_acquired", {"key": got.key.id, "waited_s": round(
                            time.monotonic() - since, 3)})
                    return got
                if got.reason == "disabled":
                    raise EngineError("every key of SONIC_REMOTE_KEYS is disabled (401/403); "
                                      "see `sonic-pipeline credentials`", code="engine.unavailable")
                if not reported and (got.reason == "cooling" or
                                     time.monotonic() - since + got.wait_s >= REPORT_AFTER_S):
                    reported = True
                    detail = {"reason": got.reason, "wait_s": round(got.wait_s, 3)}
                    report("waiting_for_credential", detail)
                    metrics.count_remote_wait(got.reason)
                    log.warning("job %s waits for a remote credential: %s, %.1f s", who,
                                got.reason, got.wait_s)
                if reported:
                    self._note(who, {"reason": got.reason, "wait_s": round(got.wait_s, 3)})
                time.sleep(min(max(got.wait_s, 0.01), POLL_S))
        finally:
            if reported:
                self._note(who, None)

    def _note(self, who: str, detail: dict[str, Any] | None) -> None:
        try:
            self.pool.note_waiting(who, detail)
        except redis.RedisError:
            pass  # only the CLI's view of waiting jobs

    def _call(self, grant: Grant, job: RenderRequest, body: bytes, content_type: str,
              should_stop: StopCheck) -> Answer:
        """One call on a helper thread; this thread polls the stop checks meanwhile."""
        dest = job.out_dir / f"remote-{grant.call_id}.part"
        box: list[Answer] = []
        gone = threading.Event()

        def work() -> None:
            try:
                answer = post(self.session, self.url, grant.key.secret.get_secret_value(),
                              body, content_type, dest, self.timeout_s, self.max_bytes)
                box.append(answer)
                self._settle(grant, answer, abandoned=gone.is_set())
            finally:
                if gone.is_set():
                    dest.unlink(missing_ok=True)

        thread = threading.Thread(target=work, name=f"remote-{grant.key.id}", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_S)
                if thread.is_alive():
                    check_stop(should_stop)
        except BaseException:
            gone.set()
            raise
        if not box:  # the helper died (a bug): the slot's lease expires by itself
            raise EngineError("the remote call ended without an answer", code="engine.failed")
        return box[0]

    def _settle(self, grant: Grant, answer: Answer, abandoned: bool) -> None:
        """Record the call's outcome in the pool, the metrics and the log."""
        outcome = Outcome.ABANDONED if abandoned and answer.outcome is Outcome.OK \
            else answer.outcome
        key, cooling = grant.key.id, 0.0
        try:
            cooling = self.pool.release(grant, outcome, retry_after_s=answer.retry_after_s(),
                                        reason=f"HTTP {answer.status}")
        except redis.RedisError as exc:  # the slot's lease ends by itself
            log.warning("remote key %s: outcome %s not recorded (%s)", key, outcome.value, exc)
        metrics.observe_remote_call(key, answer.result, answer.elapsed_s)
        metrics.set_remote_key_state(key, KEY_STATE.get(outcome, 1 if cooling else 0))
        if outcome is Outcome.AUTH:
            log.error("remote key %s disabled: HTTP %d from %s; re-enable it with "
                      "`sonic-pipeline credentials --enable %s`", key, answer.status,
                      self.url, key)
        elif outcome is Outcome.COOL:
            log.warning("remote key %s cools down %.1f s: %s", key, cooling,
                        f"HTTP {answer.status}" if answer.status else answer.text)

    def _result(self, answer: Answer, started: float) -> RenderResult:
        assert answer.path is not None
        elapsed, device = time.monotonic() - started, f"remote:{self.url}"
        if answer.content_type == "video/mp4":
            video = answer.path.with_name("remote.mp4")
            os.replace(answer.path, video)
            picture = stream(probe(video, error=EngineError, code="engine.failed"), "video")
            if picture is None:
                raise EngineError("the remote service's MP4 holds no video", code="engine.failed")
            return RenderResult(engine=self.name, width=int(picture["width"]),
                                height=int(picture["height"]), frames=_frame_count(picture),
                                video_path=video, elapsed_s=elapsed, device=device)
        if answer.content_type == "application/x-rgb24":
            return self._frames(answer, elapsed, device)
        answer.path.unlink(missing_ok=True)
        raise EngineError(f"the remote service answered {answer.content_type or 'no type'}, "
                          "not video/mp4 or application/x-rgb24", code="engine.failed")

    def _frames(self, answer: Answer, elapsed: float, device: str) -> RenderResult:
        assert answer.path is not None
        try:
            width = int(answer.headers["x-frame-width"])
            height = int(answer.headers["x-frame-height"])
            fps = int(answer.headers.get("x-frame-rate") or 25)
        except (KeyError, ValueError):
            raise EngineError("raw frames without valid X-Frame-Width / X-Frame-Height",
                              code="engine.failed") from None
        size, frame = answer.path.stat().st_size, width * height * 3
        if width <= 0 or height <= 0 or fps <= 0 or size == 0 or size % frame:
            raise EngineError(f"raw frames of {size} bytes do not fit {width}x{height}",
                              code="engine.failed")
        frames = Path(answer.path).with_name("frames.rgb")
        os.replace(answer.path, frames)
        return RenderResult(engine=self.name, width=width, height=height, frames=size // frame,
                            fps=fps, frames_path=frames, elapsed_s=elapsed, device=device)


def _frame_count(picture: dict[str, Any]) -> int:
    """Frames of a probed video stream: ``nb_frames``, else its duration times its rate
    (a fragmented MP4 does not declare the count)."""
    if str(picture.get("nb_frames") or "").isdigit():
        return int(picture["nb_frames"])
    try:
        num, _, den = str(picture.get("r_frame_rate") or "25/1").partition("/")
        return round(float(picture.get("duration") or 0) * float(num) / float(den or 1))
    except (ValueError, ZeroDivisionError):
        return 0
