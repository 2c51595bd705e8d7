"""``sonic-pipeline submit``: local inputs go to the object store first, then the job is
produced to the task topic in the documented shape (README, "The job message").

A local file is uploaded under ``uploads/<task_id>/<role><suffix>`` (role ``image`` or
``audio``): to ``SONIC_UPLOAD_BUCKET`` with the ``s3`` backend, and the job names it
``s3://<bucket>/<key>`` (the workers need the bucket in ``SONIC_INPUT_BUCKETS``, as for the
HTTP service's uploads); with the ``local`` backend to the local store, and the job names
its path (the workers need ``<SONIC_STORAGE_DIR>/uploads`` in ``SONIC_INPUT_ROOTS``). A
URL, or a path that is not a local file, is sent as it is.
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidMessage, PipelineError
from pipeline.settings import Settings
from pipeline.storage import LocalStore, ObjectStore, get_store

#: Schemes a reference given on the command line may carry (sent as they are).
URL_SCHEMES = ("file://", "s3://", "http://", "https://")


def new_task_id() -> str:
    return uuid.uuid4().hex


#: Key prefix of uploaded inputs.
UPLOAD_PREFIX = "uploads"


def upload_key(task_id: str, role: str, path: Path) -> str:
    return f"{UPLOAD_PREFIX}/{task_id}/{role}{path.suffix.lower()}"


def upload_store(settings: Settings) -> ObjectStore:
    """The store inputs go to: the upload bucket (``s3``), or the local store."""
    if settings.storage_backend == "s3":
        return get_store(settings.model_copy(update={"s3_bucket": settings.upload_bucket}))
    return get_store(settings)


def is_local_file(ref: str) -> bool:
    return not ref.startswith(URL_SCHEMES) and Path(ref).expanduser().is_file()


def upload(settings: Settings, task_id: str, role: str, ref: str) -> str:
    """The reference the job carries for ``ref``: uploaded first when it is a local file.
    Raises the store's errors (``storage.unavailable``, ``storage.misconfigured``)."""
    if not is_local_file(ref):
        return ref
    path = Path(ref).expanduser().absolute()
    key = upload_key(task_id, role, path)
    store = upload_store(settings)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    store.put_file(path, key, content_type)
    if isinstance(store, LocalStore):
        return str(store.path(key))
    return f"s3://{settings.upload_bucket}/{key}"


def reachable_by_workers(settings: Settings, ref: str) -> str | None:
    """Why the workers (with these settings) would refuse ``ref``, or None."""
    from pipeline.inputs.urls import check_url

    try:
        check_url(ref, settings)
    except PipelineError as exc:
        return exc.message
    return None


def message(task_id: str, image_url: str, audio_url: str, *, callback_url: str | None = None,
            engine: str | None = None, config: dict[str, Any] | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job message (the seed's fields first; ``None`` values left out)."""
    out: dict[str, Any] = {"task_id": task_id, "audio_url": audio_url, "image_url": image_url,
                           "config": {k: v for k, v in (config or {}).items() if v is not None}}
    if callback_url:
        out["callback_url"] = callback_url
    if engine:
        out["engine"] = engine
    out.update({k: v for k, v in (extra or {}).items() if v is not None})
    return out


def encode(message: dict[str, Any]) -> bytes:
    """The message as the record's value (compact JSON; a NaN or infinite number is
    refused with ``message.out_of_range``: JSON has none, the bridge could not read it)."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise InvalidMessage("a number of the job is NaN or infinite; give finite numbers",
                             code="message.out_of_range",
                             task_id=message.get("task_id")) from None


def check_at_the_door(message: dict[str, Any], settings: Settings) -> None:
    """The bridge's own check of ``message`` (:func:`pipeline.jobs.decode`), before anything
    is uploaded or published: raises :class:`InvalidMessage` (its code and message, as
    the bridge would reject it). The input references are not checked against these
    settings' roots and hosts here (the workers' settings decide; the caller warns)."""
    from pipeline.jobs import decode, default_checks

    _, check_callback = default_checks()
    decode(encode(message), settings, check_url=lambda _url, _settings: None,
           check_callback=check_callback)
