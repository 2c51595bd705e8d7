"""Where a task's stages leave their work in the shared work dir, and how they read it.

    <work_dir>/<task_id>/inputs/      fetched image and audio
    <work_dir>/<task_id>/audio.wav    16 kHz mono (preprocess)
    <work_dir>/<task_id>/face.png     cropped portrait (preprocess)
    <work_dir>/<task_id>/prepared.json
    <work_dir>/<task_id>/render/      frames or engine video (gpu); render.json
    <work_dir>/<task_id>/video.mp4, poster.jpg   (encode)

Every file is written under a temporary name and renamed, so a re-run overwrites. A
task id becomes a path only through :func:`task_workdir`, which refuses one that is not
a valid id or would resolve outside the work dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.atomic import atomic_write
from pipeline.errors import PermanentError
from pipeline.job_ids import is_task_id
from pipeline.jobs import JobConfig, invalid_message


def write_json(path: Path, data: dict[str, Any]) -> None:
    body = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda out: out.write(body))


def read_json(path: Path) -> dict[str, Any]:
    """A previous stage's record; its absence means the chain ran out of order."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PermanentError(f"missing artifact {path.name} from the previous stage "
                             f"(work dir {path.parent})", code="task.lost") from None


def task_workdir(work_dir: Path, task_id: str) -> Path:
    """``<work_dir>/<task_id>``, resolved; strictly inside ``work_dir`` or an error.

    Raises :class:`PermanentError` (``task.invalid_id``) for a task id that is not valid
    (``..``, ``a/b``, an absolute path, NUL...) or whose directory resolves elsewhere
    (a symlink planted in the work dir).
    """
    if not is_task_id(task_id):
        raise PermanentError(f"task id {task_id!r} cannot name a work dir: it must be letters, "
                             "digits and ._:- not starting with '.'", code="task.invalid_id")
    root = Path(work_dir).resolve()
    path = (root / task_id).resolve()
    if path.parent != root:
        raise PermanentError(f"task id {task_id!r}: its work dir resolves to {path}, outside "
                             f"{root}", code="task.invalid_id")
    return path


def job_config(task: dict[str, Any]) -> dict[str, Any]:
    """The render knobs of a task, validated: ``{knob: int | float | ...}``.

    The stored ``config`` over the payload's; known knobs typed and in range
    (:mod:`pipeline.job_limits`), unknown knobs kept for the engine, no ``None`` value.
    Raises :class:`PermanentError` (``message.wrong_type`` / ``message.out_of_range``)
    for a stored config that does not validate (a row admitted before these rules).
    """
    config = task.get("config") or {}
    payload_config = (task.get("payload") or {}).get("config") or {}
    if not isinstance(config, dict) or not isinstance(payload_config, dict):
        raise PermanentError("the task's config is not an object", code="message.wrong_type")
    try:
        knobs = JobConfig.model_validate({**payload_config, **config})
    except ValidationError as exc:
        error = invalid_message(exc, prefix="config")
        raise PermanentError(error.message, code=error.code) from None
    return knobs.model_dump(exclude_none=True)
