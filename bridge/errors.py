"""What the bridge treats as a passing failure of a service: back off and retry."""

from __future__ import annotations

import kombu.exceptions
import psycopg2
import redis
import sqlalchemy.exc
from kafka.errors import KafkaError

#: Errors of a service a step talks to: back off and retry, never crash.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg2.Error, sqlalchemy.exc.SQLAlchemyError, redis.RedisError, OSError,
    kombu.exceptions.OperationalError, KafkaError)
