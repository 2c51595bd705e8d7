"""Where a task's stages leave their work in the shared work dir, and how they read it.

    <work_dir>/<task_id>/inputs/      fetched image and audio
    <work_dir>/<task_id>/audio.wav    16 kHz mono (preprocess)
    <work_dir>/<task_id>/face.png     cropped portrait (preprocess)
    <work_dir>/<task_id>/prepared.json
    <work_dir>/<task_id>/render/      frames or engine video (gpu); render.json
    <work_dir>/<task_id>/video.mp4, poster.jpg   (encode)

Every file is written under a temporary name and renamed, so a re-run overwrites.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write
from pipeline.errors import PermanentError


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


def job_config(task: dict[str, Any]) -> dict[str, Any]:
    """The render knobs of a task: the message's ``config`` (unknown knobs kept)."""
    config = dict(task.get("config") or {})
    payload_config = (task.get("payload") or {}).get("config") or {}
    return {**payload_config, **config}
