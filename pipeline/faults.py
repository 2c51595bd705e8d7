"""Any exception a stage raises, as a coded :class:`~pipeline.errors.PipelineError`.

    PipelineError                            itself
    MemoryError, CUDA out of memory          resource.out_of_memory   permanent
    OSError ENOSPC / EDQUOT                  resource.disk_full       recoverable
    a database disconnect (SQLAlchemy)       database.unavailable     recoverable
    a refused / reset / timed-out socket     transport.error          recoverable
    cv2.error while decoding an image        image.undecodable        permanent
    Celery's SoftTimeLimitExceeded           stage.timeout            permanent
    anything else                            internal.error           permanent

Nothing here imports torch or cv2: their errors are recognised by type name and module.
"""

from __future__ import annotations

import errno
import traceback

from sqlalchemy import exc as sa_exc

from pipeline.errors import (DatabaseUnavailable, DiskFull, ImageError, InternalError,
                             OutOfMemory, PipelineError, StageTimeout, TransportError)

#: errno values meaning the disk (or the quota) is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values of a network peer that went away or never answered.
NETWORK = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                     errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})
#: Functions of ours whose cv2 errors mean "this image cannot be decoded".
_DECODERS = frozenset({"decode_image"})
#: Most characters of a traceback kept in ``task_events.detail``.
TRACEBACK_CHARS = 8000


def _names(exc: BaseException) -> set[str]:
    """``module.Name`` of the exception's class and of every base class."""
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, ``torch.cuda.OutOfMemoryError`` (or any ``*OutOfMemoryError``), or an
    older torch's ``RuntimeError('CUDA out of memory ...')``."""
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_database_error(exc: BaseException) -> bool:
    """A lost or refused PostgreSQL connection (worth retrying), not a bad statement."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return bool({"psycopg2.OperationalError", "psycopg2.InterfaceError"} & _names(exc))


def is_soft_time_limit(exc: BaseException) -> bool:
    """Celery's soft time limit (the class lives in billiard; celery re-exports it)."""
    return any(cls.__name__ == "SoftTimeLimitExceeded" for cls in type(exc).__mro__)


def _is_cv2_decode(exc: BaseException) -> bool:
    if type(exc).__module__ != "cv2" or type(exc).__name__ != "error":
        return False
    if "imdecode" in str(exc) or "imread" in str(exc):
        return True
    return any(frame.name in _DECODERS for frame in traceback.extract_tb(exc.__traceback__))


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (the message cut at 500 characters)."""
    message = " ".join(str(exc).split())[:500]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def traceback_text(exc: BaseException) -> str:
    """The exception's traceback, its last :data:`TRACEBACK_CHARS` characters."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text[-TRACEBACK_CHARS:]


def classify(exc: BaseException) -> PipelineError:
    """The coded error for ``exc`` (see the module docstring); ours are returned as they are.

    The result's ``detail`` names the original exception type (``exception``).
    """
    if isinstance(exc, PipelineError):
        return exc
    what = describe(exc)
    kind = type(exc).__name__
    if is_soft_time_limit(exc):
        return StageTimeout(f"the stage ran past its time limit ({what})", exception=kind)
    if is_out_of_memory(exc):
        return OutOfMemory(f"out of memory: {what}", exception=kind)
    if is_database_error(exc):
        return DatabaseUnavailable(f"PostgreSQL: {what}", exception=kind)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return DiskFull(f"no space left: {what}", exception=kind)
    if isinstance(exc, OSError) and exc.errno in NETWORK or isinstance(exc, TimeoutError):
        return TransportError(f"network: {what}", exception=kind)
    if _is_cv2_decode(exc):
        return ImageError(f"the image cannot be decoded: {what}", code="image.undecodable",
                          exception=kind)
    return InternalError(what, exception=kind)
