"""Start-up connections to Postgres, Redis and Kafka: each failure is one clear line.

A service that cannot be reached raises :class:`ServiceUnavailable` (exit 4) naming the
service and the fix; a bad credential or a missing schema is a :class:`ConfigError` (3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import redis
import sqlalchemy.exc
from kafka.errors import KafkaError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import Engine, text

from pipeline.errors import ConfigError, ServiceUnavailable
from pipeline.settings import Settings
from pipeline.state.db import make_db_engine
from pipeline.state.health import explain_db_error

T = TypeVar("T")


def postgres(settings: Settings) -> Engine:
    db_engine = make_db_engine(settings, pool_size=2)
    try:
        with db_engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM tasks LIMIT 0"))
    except sqlalchemy.exc.ProgrammingError:
        db_engine.dispose()
        raise ConfigError("postgres: the tasks table is missing; run "
                          "`sonic-pipeline db upgrade`") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        db_engine.dispose()
        raise explain_db_error(exc, settings) from None
    return db_engine


def redis_client(settings: Settings) -> redis.Redis:
    client = redis.Redis(
        host=settings.redis_host, port=settings.redis_port, db=settings.redis_db,
        password=(settings.redis_password.get_secret_value()
                  if settings.redis_password else None),
        socket_timeout=10, socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2))
    try:
        client.ping()
    except redis.AuthenticationError:
        raise ConfigError("redis: authentication failed; check SONIC_REDIS_PASSWORD") from None
    except redis.RedisError:
        raise ServiceUnavailable(
            f"redis: cannot connect to {settings.redis_host}:{settings.redis_port}; start it "
            "with `make up` or set SONIC_REDIS_HOST / SONIC_REDIS_PORT") from None
    return client


def kafka(settings: Settings, build: Callable[[], T]) -> T:
    """Build a Kafka client; its library logs stay quiet: one line says what is wrong."""
    library = logging.getLogger("kafka")
    level = library.level
    library.setLevel(logging.CRITICAL)
    try:
        return build()
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"kafka: cannot connect to {settings.kafka_bootstrap} ({type(exc).__name__}); "
            "start it with `make up` or set SONIC_KAFKA_BOOTSTRAP") from None
    finally:
        library.setLevel(level)
