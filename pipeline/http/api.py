"""The ``/v1`` routes. Each takes the caller from :func:`auth.principal`; data comes from
:class:`store.TaskStore`, uploads go through :mod:`uploads`, jobs out through :mod:`kafka`."""

from __future__ import annotations

import re
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from pipeline.errors import PipelineError, ServiceUnavailable
from pipeline.job_ids import is_task_id, not_a_task_id
from pipeline.state.status import Status
from pipeline.storage import LocalStore

from . import sse
from .auth import COOKIE, Principal, principal
from .errors import ApiError
from .metrics import REFUSED, SUBMITTED
from .uploads import check_files, check_size, job_message, parse_metadata

router = APIRouter(prefix="/v1")
Caller = Annotated[Principal, Depends(principal)]
_STATUSES = {s.value for s in Status} | {"submitted"}


def _res(request: Request) -> Any:
    return request.app.state.resources


def _not_found(task_id: str) -> ApiError:
    return ApiError(404, "task.not_found", f"no task {task_id!r} for this tenant")


def _task_id(task_id: str) -> str:
    """``task_id`` from the path when it can be a task id (:func:`is_task_id`), else 400
    ``task.invalid_id`` (a NUL byte or a 2,000-character id never reaches the database)."""
    if not is_task_id(task_id):
        raise ApiError(400, "task.invalid_id", not_a_task_id(task_id))
    return task_id


def _save(part: UploadFile, kind: str, folder: Path, settings: Any) -> Path:
    """Copy an upload to ``folder/kind/<its file name>`` (``input.too_large`` past the input
    cap); the name, reduced to safe characters, only makes error messages readable."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(part.filename or kind).name)[-100:]
    target = folder / kind / (name.lstrip(".") or kind)
    target.parent.mkdir()
    with target.open("wb") as out:
        copied = 0
        while chunk := part.file.read(1024 * 1024):
            copied += len(chunk)
            check_size(kind, copied, settings)
            out.write(chunk)
    return target


@router.post("/tasks", status_code=202, summary="Upload a portrait and an audio file; "
             "the job is produced to Kafka", responses={
                 202: {"description": "accepted: the job is on the task topic"},
                 400: {"description": "a missing part or a bad field (message.*, input.*)"},
                 401: {"description": "no or a bad token (auth.unauthorized)"},
                 413: {"description": "a part too large (input.too_large, image.too_large)"},
                 422: {"description": "undecodable media (image.*, audio.*)"},
                 503: {"description": "Kafka or the object store unavailable"}})
def create_task(
    request: Request, who: Caller,
    image: Annotated[UploadFile, File(description="the portrait (JPEG, PNG, WebP, ...)")],
    audio: Annotated[UploadFile, File(description="the speech (WAV, MP3, FLAC, ...)")],
    min_resolution: Annotated[int | None, Form()] = None,
    inference_steps: Annotated[int | None, Form()] = None,
    dynamic_scale: Annotated[float | None, Form()] = None,
    motion_scale: Annotated[float | None, Form()] = None,
    expand_ratio: Annotated[float | None, Form()] = None,
    seed: Annotated[int | None, Form()] = None,
    priority: Annotated[int | None, Form()] = None,
    engine: Annotated[str | None, Form(max_length=64)] = None,
    callback_url: Annotated[str | None, Form(max_length=4096)] = None,
    metadata: Annotated[str | None, Form(description="a JSON object, returned in the "
                                                     "callback")] = None,
) -> JSONResponse:
    res = _res(request)
    settings = res.settings
    task_id = uuid.uuid4().hex
    fields = {"min_resolution": min_resolution, "inference_steps": inference_steps,
              "dynamic_scale": dynamic_scale, "motion_scale": motion_scale,
              "expand_ratio": expand_ratio, "seed": seed, "priority": priority,
              "engine": engine or None, "callback_url": callback_url or None}
    try:
        fields["metadata"] = parse_metadata(metadata)
        with tempfile.TemporaryDirectory(prefix="sonic-upload-") as tmp:
            folder = Path(tmp)
            checked = check_files(_save(image, "image", folder, settings),
                                  _save(audio, "audio", folder, settings), settings)
            keys = res.uploads.keys(who.tenant, task_id, checked)
            refs = {name: res.uploads.ref(key) for name, key in keys.items()}
            value = job_message(task_id, who.tenant, refs, fields, settings)
            res.uploads.put(keys, checked)
    except PipelineError as exc:
        REFUSED.labels(exc.code).inc()
        raise
    try:
        partition, offset = res.kafka.send(task_id, value)
    except ServiceUnavailable:
        REFUSED.labels("service.unavailable").inc()
        try:
            res.uploads.remove(keys)
        except PipelineError:
            pass  # the objects stay; nothing refers to them
        raise
    # Before the answer names the id, so no read of it can miss both this and the row.
    res.store.mark_submitted(task_id, who.tenant)
    SUBMITTED.labels(who.tenant or "").inc()
    body = {"task_id": task_id, "status": "submitted", "tenant": who.tenant,
            "image_url": refs["image"], "audio_url": refs["audio"],
            "kafka": {"topic": res.kafka.topic, "partition": partition, "offset": offset},
            "links": {"self": f"/v1/tasks/{task_id}", "events": f"/v1/tasks/{task_id}/events",
                      "video": f"/v1/tasks/{task_id}/video"}}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/tasks/{task_id}"})


@router.get("/tasks", summary="The caller's jobs, newest first")
def list_tasks(
    request: Request, who: Caller,
    status: Annotated[str | None, Query(description="one or more, comma-separated")] = None,
    tenant: Annotated[str | None, Query(max_length=128, description="operators: one tenant; "
                                        "a tenant sees only its own jobs")] = None,
    since: Annotated[datetime | None, Query(description="received at or after (ISO 8601)")
                     ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    unknown = sorted(set(statuses or ()) - _STATUSES)
    if unknown:
        raise ApiError(400, "message.wrong_type", f"unknown status {', '.join(unknown)}; "
                       f"one of {', '.join(sorted(_STATUSES))}")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    try:
        page, following = _res(request).store.tasks(
            who.tenant, statuses=statuses, tenant_filter=tenant, since=since, limit=limit,
            cursor=cursor)
    except ValueError as exc:
        raise ApiError(400, "message.wrong_type", str(exc)) from None
    return {"tasks": page, "next_cursor": following}


@router.get("/tasks/{task_id}", summary="A job's latest status")
def get_task(request: Request, who: Caller, task_id: str) -> dict[str, Any]:
    found = _res(request).store.task(_task_id(task_id), who.tenant)
    if found is None:
        raise _not_found(task_id)
    return found


@router.get("/tasks/{task_id}/events", summary="The job's status events (Server-Sent "
            "Events) until it is final", response_class=Response, responses={
                200: {"content": {"text/event-stream": {}},
                      "description": "id: event id; event: status | end; data: JSON"}})
def task_events(request: Request, who: Caller, task_id: str,
                last_event_id: Annotated[str | None, Header()] = None,
                after: Annotated[int | None, Query(ge=0)] = None) -> Response:
    store = _res(request).store
    if store.task(_task_id(task_id), who.tenant) is None:
        raise _not_found(task_id)
    try:
        after_id = int(last_event_id) if last_event_id else (after or 0)
    except ValueError:
        raise ApiError(400, "message.wrong_type", "Last-Event-ID must be an event id "
                       "(an integer)") from None
    return sse.response(request, store, task_id, who.tenant, after_id)


@router.get("/tasks/{task_id}/video", summary="The video: a redirect to a presigned URL, "
            "or the bytes", response_class=Response, responses={
                200: {"content": {"video/mp4": {}}}, 307: {"description": "presigned URL"},
                409: {"description": "the job has no video (yet): task.not_ready"}})
def task_video(request: Request, who: Caller, task_id: str) -> Response:
    res = _res(request)
    found = res.store.task(_task_id(task_id), who.tenant)
    if found is None:
        raise _not_found(task_id)
    key = res.store.result_key(task_id)
    if found["status"] != Status.COMPLETED.value or not key:
        raise ApiError(409, "task.not_ready", f"task {task_id} is {found['status']}: "
                       "no video to show")
    if isinstance(res.videos, LocalStore):
        return FileResponse(res.videos.path(key), media_type="video/mp4",
                            headers={"Cache-Control": "private, max-age=300"})
    return RedirectResponse(res.videos.url(key), status_code=307,
                            headers={"Cache-Control": "no-store"})


@router.post("/session", summary="Trade the bearer token for a session cookie "
             "(honoured on GET only: event streams and the video in the page)")
def create_session(request: Request, who: Caller) -> JSONResponse:
    if request.headers.get("authorization") is None:
        raise ApiError(401, "auth.unauthorized", "a session is made from a bearer token")
    auth = _res(request).auth
    response = JSONResponse({"tenant": who.tenant, "operator": who.operator,
                             "expires_in_s": auth.ttl_s})
    response.set_cookie(COOKIE, auth.cookie_for(who), max_age=auth.ttl_s, path="/v1",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.delete("/session", status_code=204, summary="Forget the session cookie")
def delete_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/v1")
    return response
