"""upload (io): the video and poster to object storage under deterministic keys.

A retry overwrites the same keys: at most one final video object per task. Once both are
stored the job's work dir is removed (nothing after this stage reads it: the callback is
built from the task's row). A copy of this stage that finds the work dir gone and both
objects stored (an earlier copy uploaded, cleaned up, then could not record it: a
database error, a lost lease) records the upload instead of failing.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pipeline.housekeeping import remove_workdir
from pipeline.state.status import Status
from pipeline.stages.runner import StageContext
from pipeline.storage import get_store
from pipeline.storage.base import ObjectStore


def video_key(task_id: str) -> str:
    return f"videos/{task_id}.mp4"


def poster_key(task_id: str) -> str:
    return f"videos/{task_id}.jpg"


def run(ctx: StageContext) -> dict[str, Any]:
    store = get_store(ctx.settings)
    video = ctx.workdir / "video.mp4"
    if not video.exists() and _stored(store, ctx.task_id):
        key = video_key(ctx.task_id)
    else:
        key = store.put_file(video, video_key(ctx.task_id), "video/mp4").key
        store.put_file(ctx.workdir / "poster.jpg", poster_key(ctx.task_id), "image/jpeg")
    fields = {
        "status": Status.COMPLETED.value,
        "result_key": key,
        "result_url": store.url(key),
        "finished_at": datetime.now(timezone.utc),
        "progress": 100.0,
    }
    remove_workdir(ctx.settings, ctx.task_id)
    return fields


def _stored(store: ObjectStore, task_id: str) -> bool:
    return store.exists(video_key(task_id)) and store.exists(poster_key(task_id))
