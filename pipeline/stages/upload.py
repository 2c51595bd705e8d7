"""upload (io): the video and poster to object storage under deterministic keys.

A retry overwrites the same keys: at most one final video object per task.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from typing import Any

from pipeline.state.status import Status
from pipeline.stages.runner import StageContext
from pipeline.storage import get_store


def video_key(task_id: str) -> str:
    return f"videos/{task_id}.mp4"


def poster_key(task_id: str) -> str:
    return f"videos/{task_id}.jpg"


def run(ctx: StageContext) -> dict[str, Any]:
    store = get_store(ctx.settings)
    video = store.put_file(ctx.workdir / "video.mp4", video_key(ctx.task_id), "video/mp4")
    store.put_file(ctx.workdir / "poster.jpg", poster_key(ctx.task_id), "image/jpeg")
    # The raw frames are the bulk of the work dir; the encoded video is kept until the
    # task is cleaned up.
    shutil.rmtree(ctx.workdir / "render", ignore_errors=True)
    return {
        "status": Status.COMPLETED.value,
        "result_key": video.key,
        "result_url": store.url(video.key),
        "finished_at": datetime.now(timezone.utc),
        "progress": 100.0,
    }
