"""A service the CLI cannot reach is one line naming it, where, and the fix; exit 4.

    with reaching_postgres(settings): ...     driver errors -> explain_db_error (3 or 4)
    require_kafka(settings)                   a TCP probe of the brokers first
    with reaching_redis(settings): ...
    with reaching_store(settings): ...        the object store (S3 / MinIO)

Each raises :class:`pipeline.errors.ServiceUnavailable` (``service.unavailable``, exit 4);
a refused password is a :class:`ConfigError` (exit 3). No traceback reaches the user.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from pipeline.errors import PipelineError, ServiceUnavailable
from pipeline.settings import Settings

#: Seconds a TCP probe waits for a service.
PROBE_TIMEOUT_S = 2.0


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def kafka_unreachable(settings: Settings) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"kafka: cannot connect to {settings.kafka_bootstrap}; start it with `make up` or "
        "set SONIC_KAFKA_BOOTSTRAP")


def require_kafka(settings: Settings) -> None:
    """Raise ``service.unavailable`` unless one of the bootstrap brokers accepts a
    connection (a closed port answers at once; a wrong host within 2 s)."""
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit() and _answers(host.strip("[]"), int(port)):
            return
    raise kafka_unreachable(settings)


class _RefusedLogins(logging.Handler):
    """Keeps the authentication errors kafka-python logs while it retries a bootstrap
    (it then raises only ``Unable to bootstrap``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.refused: list[Exception] = []

    def emit(self, record: logging.LogRecord) -> None:
        from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

        args = record.args if isinstance(record.args, tuple) else ()
        self.refused += [a for a in args if isinstance(
            a, (SaslAuthenticationFailedError, AuthorizationError))]


@contextmanager
def reaching_kafka(settings: Settings) -> Iterator[None]:
    """Kafka client errors inside the block become one ``service.unavailable`` line; a
    broker refusing the SASL login says so (never the password)."""
    from kafka.errors import KafkaError

    require_kafka(settings)
    logger = logging.getLogger("kafka.net.manager")
    refusals, level, propagate = _RefusedLogins(), logger.level, logger.propagate
    logger.addHandler(refusals)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    except KafkaError as exc:
        if refusals.refused:
            cause = refusals.refused[-1]
            raise ServiceUnavailable(
                f"kafka at {settings.kafka_bootstrap}: authentication refused "
                f"({type(cause).__name__}: {cause}); check SONIC_KAFKA_SASL_USERNAME, "
                "SONIC_KAFKA_SASL_PASSWORD and SONIC_KAFKA_SASL_MECHANISM") from None
        raise ServiceUnavailable(
            f"kafka at {settings.kafka_bootstrap}: {type(exc).__name__}: {exc}; check the "
            "broker (`make status`) and SONIC_KAFKA_*") from None
    finally:
        logger.removeHandler(refusals)
        logger.setLevel(level)
        logger.propagate = propagate


@contextmanager
def reaching_postgres(settings: Settings) -> Iterator[None]:
    """SQLAlchemy errors inside the block become one line (exit 3 or 4)."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.state.health import explain_db_error

    try:
        yield
    except SQLAlchemyError as exc:
        raise explain_db_error(exc, settings) from None


@contextmanager
def reaching_redis(settings: Settings) -> Iterator[None]:
    """A TCP probe first, then Redis errors inside the block become one
    ``service.unavailable`` line."""
    from redis.exceptions import RedisError

    if not _answers(settings.redis_host, settings.redis_port):
        raise _redis_unreachable(settings, "connection refused")
    try:
        yield
    except RedisError as exc:
        raise _redis_unreachable(settings, type(exc).__name__) from None


def _redis_unreachable(settings: Settings, why: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"redis: cannot reach {settings.redis_host}:{settings.redis_port} ({why}); start it "
        "with `make up` or set SONIC_REDIS_HOST / SONIC_REDIS_PORT")


def store_location(settings: Settings) -> str:
    if settings.storage_backend == "local":
        return str(settings.storage_dir)
    return settings.s3_endpoint or "AWS S3"


@contextmanager
def reaching_store(settings: Settings) -> Iterator[None]:
    """An object store that cannot be reached (``storage.unavailable``) becomes one
    ``service.unavailable`` line; a refusal (``storage.misconfigured``) stays as it is."""
    if settings.storage_backend == "s3" and settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.hostname and not _answers(parts.hostname, port):
            raise ServiceUnavailable(
                f"object store: cannot connect to {settings.s3_endpoint} (bucket "
                f"{settings.s3_bucket}); start it with `make up` or set SONIC_S3_ENDPOINT")
    try:
        yield
    except PipelineError as exc:
        if exc.code == "storage.unavailable":
            raise ServiceUnavailable(
                f"object store at {store_location(settings)}: {exc.message}; check it "
                "(`make status`) and SONIC_S3_ENDPOINT / SONIC_STORAGE_*") from None
        raise
