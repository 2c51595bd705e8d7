"""The callback body and its stable message id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from pipeline.errors import PipelineError

#: Namespace of message ids: the same task and final status always give the same id.
_NAMESPACE = uuid.UUID("5b0c1d2e-9a57-4f43-8a52-7c2f3e4d5a61")


def message_id(task_id: str, status: str) -> str:
    """``msg_<hex>``, stable for a task's callback in a given status (receivers dedupe)."""
    return "msg_" + uuid.uuid5(_NAMESPACE, f"{task_id}/{status}").hex


def build_payload(
    task_id: str,
    status: str,
    video_url: str | None = None,
    error: PipelineError | Mapping[str, Any] | None = None,
    timings: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The callback JSON: the seed's ``task_id``, ``status``, ``video_url`` first, in that
    order, then ``error`` ({code, message} or null), ``timings`` and ``metadata``."""
    if isinstance(error, PipelineError):
        error = {"code": error.code, "message": error.message}
    elif error is not None:
        error = {"code": str(error.get("code", "")), "message": str(error.get("message", ""))}
    return {
        "task_id": task_id,
        "status": status,
        "video_url": video_url,
        "error": error,
        "timings": dict(timings or {}),
        "metadata": dict(metadata or {}),
    }


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed (key order kept, compact, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
