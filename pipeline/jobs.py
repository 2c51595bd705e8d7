"""The job message upstream services publish, validated at the door.

:func:`decode` turns a Kafka record's value into a :class:`Job` or raises
:class:`~pipeline.errors.InvalidMessage` with a stable code:

    message.too_large      the value exceeds ``settings.max_message_bytes``
    message.invalid_json   not JSON, or not a JSON object
    message.missing_field  a required field is absent
    message.wrong_type     a field has the wrong type or an out-of-range value
    input.forbidden_url    an input or callback URL has a scheme that is not allowed

The seed article's shape is accepted as it is; unknown fields are kept (``extra``) and
stored with the rest of the payload.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pipeline.errors import InputError, InvalidMessage
from pipeline.inputs import check_callback_url, check_url
from pipeline.settings import Settings

#: Task ids: no whitespace or control characters, at most the column's 128 characters.
TASK_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]{1,128}$"
#: Lowest and highest job priority (Celery on Redis: 0 runs first).
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Name = Annotated[str, StringConstraints(max_length=128)]


class JobConfig(BaseModel):
    """Render knobs (Sonic's names); unknown knobs are kept for the engine."""

    model_config = ConfigDict(extra="allow")

    min_resolution: int | None = Field(None, gt=0)
    expand_ratio: float | None = Field(None, ge=0)
    inference_steps: int | None = Field(None, gt=0)
    dynamic_scale: float | None = Field(None, gt=0)
    motion_scale: float | None = Field(None, gt=0)
    seed: int | None = None


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str | None = Field(None, max_length=16)
    fps: float | None = Field(None, gt=0, le=120)


class Job(BaseModel):
    """One generation job. Required: ``task_id``, ``audio_url``, ``image_url``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    task_id: TaskId
    audio_url: Url
    image_url: Url
    duration: float | None = Field(None, ge=0)
    config: JobConfig = Field(default_factory=JobConfig)
    callback_url: Url | None = None
    user_id: Name | None = None
    tenant: Name | None = None
    priority: int = Field(PRIORITY_DEFAULT, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    ordering_key: Annotated[str, StringConstraints(max_length=1024)] | None = None
    depends_on: list[TaskId] = Field(default_factory=list, max_length=1000)
    deadline: datetime | None = None
    ttl_s: float | None = Field(None, gt=0)
    engine: Annotated[str, StringConstraints(max_length=64)] | None = None
    output: OutputSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def deadline_at(self, produced_ms: int | None) -> datetime | None:
        """``deadline``, else ``ttl_s`` after the record was produced (stable on redelivery)."""
        if self.deadline is not None:
            if self.deadline.tzinfo is None:
                return self.deadline.replace(tzinfo=timezone.utc)
            return self.deadline
        if self.ttl_s is None:
            return None
        base = (datetime.fromtimestamp(produced_ms / 1000, timezone.utc) if produced_ms
                else datetime.now(timezone.utc))
        return base + timedelta(seconds=self.ttl_s)


#: ``check(url, settings)``: raises InputError (``input.forbidden_url``) for a URL not allowed.
UrlCheck = Callable[[str, Settings], object]


def default_checks() -> tuple[UrlCheck, UrlCheck]:
    """``pipeline.inputs``' admission checks (pure, no network I/O)."""
    return check_url, check_callback_url


def decode(value: bytes | None, settings: Settings, *, check_url: UrlCheck | None = None,
           check_callback: UrlCheck | None = None) -> Job:
    """Validate one record value; raise :class:`InvalidMessage` with a precise code."""
    if value is None:
        raise InvalidMessage("the message has no value (a tombstone)", code="message.invalid_json")
    if len(value) > settings.max_message_bytes:
        raise InvalidMessage(
            f"the message is {len(value)} bytes, over SONIC_MAX_MESSAGE_BYTES="
            f"{settings.max_message_bytes}; send media by reference",
            code="message.too_large", task_id=peek_task_id(value))
    try:
        job = Job.model_validate_json(value)
    except ValidationError as exc:
        raise _invalid(exc, value) from None
    if check_url is None or check_callback is None:
        check_url, check_callback = default_checks()
    try:
        check_url(job.audio_url, settings)
        check_url(job.image_url, settings)
        if job.callback_url is not None:
            check_callback(job.callback_url, settings)
    except InputError as exc:
        raise InvalidMessage(exc.message, code=exc.code, task_id=job.task_id) from None
    return job


def peek_task_id(value: bytes) -> str | None:
    """The task id of a message that failed validation, when one can be read."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if isinstance(task_id, str) and 0 < len(task_id) <= 128 and task_id.isprintable() \
            and not any(c.isspace() for c in task_id):
        return task_id
    return None


_RANK = {"message.invalid_json": 0, "message.missing_field": 1, "message.wrong_type": 2}


def _invalid(exc: ValidationError, value: bytes) -> InvalidMessage:
    found: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False, include_input=False):
        kind, loc = error["type"], error["loc"]
        where = ".".join(str(part) for part in loc)
        if kind == "json_invalid" or (kind == "model_type" and not loc):
            found.append(("message.invalid_json", f"the value is not a JSON object: {error['msg']}"))
        elif kind == "missing":
            found.append(("message.missing_field", f"field {where!r} is required"))
        else:
            found.append(("message.wrong_type", f"field {where!r}: {error['msg']}"))
    code, message = min(found, key=lambda item: _RANK[item[0]])
    task_id = None if code == "message.invalid_json" else peek_task_id(value)
    return InvalidMessage(message, code=code, task_id=task_id)
