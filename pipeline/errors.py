"""Every error the pipeline raises on purpose, rooted at one base class.

Each error carries a stable ``code`` (a dotted string users can search for, stored in
``tasks.error_code`` and sent in the callback) and a message a person can act on.

    PipelineError
     +-- ConfigError                      config.*      bad settings: exit, do not retry
     +-- ServiceUnavailable               service.*     cannot reach Kafka/Redis/Postgres
     +-- RecoverableError                 retried with backoff
     |    +-- TransportError              transport.*   network, broker, timeouts
     |    +-- StorageError                storage.*     object store 5xx / unreachable
     |                                    (a missing bucket / 403 is storage.misconfigured,
     |                                     a PermanentError)
     |    +-- CallbackRetry               callback.retry  receiver timeout / 429 / 5xx
     |    +-- CallbackPaused              callback.paused  destination's breaker open or
     |                                    rate limit reached: delayed, no request made
     |    +-- DiskFull                    resource.disk_full  no space left on the work dir
     |    +-- DatabaseUnavailable         database.unavailable  PostgreSQL gone mid-stage
     +-- PermanentError                   fail at once, never retried
          +-- InvalidMessage              message.*     not JSON, missing/wrong field, too big
          +-- InputError                  input.*       forbidden URL, too large, not found
          +-- AudioError                  audio.*       undecodable, silent, too long
          +-- ImageError                  image.*       undecodable, no face
          +-- EngineError                 engine.*      unavailable, failed
          +-- EncodeError                 encode.*      ffmpeg failed
          +-- DependencyFailed            dependency.failed  a depends_on job failed
          +-- Cancelled                   task.cancelled / task.deadline
          +-- StageTimeout                stage.timeout  time limit or gpu budget exceeded
          +-- OutOfMemory                 resource.out_of_memory  host or GPU memory
          +-- InternalError               internal.error  any other exception (a bug)

Any other exception a stage raises is mapped onto this tree by
:func:`pipeline.faults.classify` (MemoryError, CUDA OOM, ENOSPC, cv2 decode errors,
Celery's soft time limit, database disconnects; the rest ``internal.error``).

The full list of codes is :data:`CODES`; the README documents it.
"""

from __future__ import annotations

from typing import Any

#: Process exit codes (a contract: the systemd units and k8s manifests in ops/ read them).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4

#: Every stable error code, with what it means. Tests check raised codes are listed here.
CODES: dict[str, str] = {
    "config.invalid": "a setting is missing or malformed",
    "service.unavailable": "a required service (Kafka, Redis, PostgreSQL) cannot be reached",
    "transport.error": "a network or broker operation failed; retried",
    "transport.timeout": "a network operation timed out; retried",
    "storage.unavailable": "the object store failed or is unreachable; retried",
    "storage.misconfigured": "the object store refused: missing bucket, access denied or bad "
    "credentials; not retried",
    "callback.retry": "the callback receiver timed out or answered 429/5xx; retried",
    "callback.rejected": "the callback receiver answered a 4xx other than 429; not retried",
    "callback.paused": "a callback was delayed without a request: its destination's circuit "
    "breaker is open (reason breaker_open) or its rate limit is reached (rate_limited)",
    "callback.expired": "the callback was still not delivered SONIC_WEBHOOK_MAX_AGE_S after "
    "the job finished; given up",
    "message.invalid_json": "the Kafka message value is not a JSON object",
    "message.missing_field": "a required field is missing",
    "message.wrong_type": "a field has the wrong type or an invalid value",
    "message.too_large": "the Kafka message exceeds SONIC_MAX_MESSAGE_BYTES",
    "message.out_of_range": "a numeric field is outside its documented range (the message "
    "names the field and the range)",
    "message.unknown_command": "a control-topic record names a command the bridge does not "
    "know (known: cancel); sent to the DLQ",
    "message.undecodable": "the Kafka client cannot decode the record (corrupt batch, a header "
    "key that is not UTF-8, an unsupported codec); whatever bytes could be recovered go to "
    "the DLQ",
    "input.forbidden_url": "an input URL's scheme, host or address is not allowed",
    "input.not_found": "an input file or object does not exist",
    "input.too_large": "an input exceeds SONIC_MAX_INPUT_BYTES",
    "input.unreachable": "an input URL could not be fetched",
    "input.unsupported_format": "an input is not a single-file media container ffmpeg may "
    "read (a playlist, concat list or image sequence sent as audio)",
    "audio.undecodable": "ffmpeg cannot decode the audio",
    "audio.silent": "the audio holds no speech-level signal: under 0.1 s of 20 ms windows "
    "above -50 dBFS anywhere in it",
    "audio.too_long": "the audio is longer than SONIC_MAX_AUDIO_S",
    "image.undecodable": "the image cannot be decoded",
    "image.no_face": "no face was found in the image",
    "image.too_large": "the image declares more pixels than SONIC_MAX_IMAGE_PIXELS; refused "
    "before decoding",
    "engine.unavailable": "the engine's code or weights are not installed",
    "engine.failed": "the engine raised while rendering",
    "encode.failed": "ffmpeg failed to encode the video",
    "dependency.failed": "a job named in depends_on failed",
    "dependency.unknown": "a depends_on id was never admitted within SONIC_DEPENDENCY_WAIT_S",
    "dependency.cycle": "the job's depends_on leads back to itself; rejected at admission",
    "task.cancelled": "the job was cancelled",
    "task.deadline": "the job's deadline passed before it finished",
    "task.lost": "the job exhausted its attempts after workers died",
    "task.not_found": "no such task id in the tasks table",
    "task.not_retryable": "`sonic-pipeline retry` refused: the job is not final, completed "
    "(without --force), or was rejected at the door (replay it from the DLQ)",
    "task.invalid_id": "a task id that cannot name a work dir or object key (letters, digits "
    "and ._:- only, not starting with '.')",
    "task.not_ready": "the HTTP service was asked for a job's video before the job completed",
    "auth.unauthorized": "the HTTP service got no bearer token, a wrong one, or an expired or "
    "forged session cookie (401)",
    "http.not_found": "the HTTP service has no such path",
    "http.error": "the HTTP service refused the request itself (a method not allowed, a "
    "body it cannot parse)",
    "stage.timeout": "a stage ran past its time limit, or the gpu stage past its budget "
    "for the audio's length; not retried",
    "resource.out_of_memory": "the stage ran out of host or GPU memory; not retried",
    "resource.disk_full": "no space left on the work dir's device; retried",
    "database.unavailable": "PostgreSQL failed or was unreachable during a stage; the stage "
    "is retried with backoff, never dropped",
    "internal.error": "a stage raised an unexpected exception (type and message in the "
    "error, the traceback in task_events.detail); not retried",
}


class PipelineError(Exception):
    """Root of every deliberate error. ``code`` is stable; ``message`` is for people."""

    code: str = "pipeline.error"
    retryable: bool = False
    #: What a process that stops on this error exits with.
    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.detail}


class ConfigError(PipelineError):
    code = "config.invalid"
    exit_code = EXIT_CONFIG


class ServiceUnavailable(PipelineError):
    code = "service.unavailable"
    exit_code = EXIT_UNAVAILABLE


class RecoverableError(PipelineError):
    """Transient: the operation may succeed if retried with backoff."""

    retryable = True


class TransportError(RecoverableError):
    code = "transport.error"


class StorageError(RecoverableError):
    code = "storage.unavailable"


class CallbackRetry(RecoverableError):
    code = "callback.retry"


class CallbackPaused(RecoverableError):
    """Flow control held a callback back before any request: ``detail`` has ``reason``
    (``breaker_open`` or ``rate_limited``), ``host`` and ``delay_s``."""

    code = "callback.paused"


class PermanentError(PipelineError):
    """Bad input or a definite failure: fail the job at once with the code."""


class InvalidMessage(PermanentError):
    """A Kafka message that can never be admitted; routed to the DLQ.

    ``partition``/``offset`` locate it; ``task_id`` is set when one could be read.
    """

    code = "message.invalid_json"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.partition = partition
        self.offset = offset
        self.task_id = task_id


class InputError(PermanentError):
    code = "input.forbidden_url"


class AudioError(PermanentError):
    code = "audio.undecodable"


class ImageError(PermanentError):
    code = "image.undecodable"


class EngineError(PermanentError):
    code = "engine.failed"


class EncodeError(PermanentError):
    code = "encode.failed"


class DependencyFailed(PermanentError):
    code = "dependency.failed"


class Cancelled(PermanentError):
    code = "task.cancelled"


class StageTimeout(PermanentError):
    code = "stage.timeout"


class OutOfMemory(PermanentError):
    code = "resource.out_of_memory"


class InternalError(PermanentError):
    code = "internal.error"


class DiskFull(RecoverableError):
    code = "resource.disk_full"


class DatabaseUnavailable(RecoverableError):
    code = "database.unavailable"
